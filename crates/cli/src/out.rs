//! Command output on stdout. A reader that goes away (`tracefold top | head`) ends the command
//! quietly, as a Unix filter does, instead of `println!`'s panic on a closed pipe; any other
//! write error still fails loudly.

use std::io::{ErrorKind, Write};

/// Writes `args` to stdout; a closed pipe exits (status 0), another error panics.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("cannot write to stdout: {e}");
    }
}

/// Whether `e` is a closed pipe somewhere in its chain.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe))
}

/// `print!` to stdout through [`write`].
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*)) };
}

/// `println!` to stdout through [`write`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};
