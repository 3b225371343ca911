//! Snapshots of `explain` for representative events of every platform: which components
//! contribute to the fingerprint and which are dropped, and why. Review changes with
//! `cargo insta review` (or INSTA_UPDATE=always) and bump the grouping version when they
//! change fingerprints of existing issues.

use std::path::Path;
use tracefold_fingerprint::{explain, GroupingConfig};

fn check(name: &str, json: &str) {
    let ev = tracefold_model::parse_event_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ex = explain(&ev, &GroupingConfig::default());
    insta::assert_json_snapshot!(name, ex);
}

#[test]
fn schema_examples_of_every_platform() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let name = format!("example_{}", p.file_stem().unwrap().to_string_lossy());
        check(&name, &std::fs::read_to_string(&p).unwrap());
    }
}

#[test]
fn browser_minified_without_function_names() {
    check(
        "javascript_minified",
        r#"{"platform":"javascript","exception":[{"type":"TypeError","value":"e is undefined","stacktrace":{"frames":[
            {"filename":"https://shop.example.com/static/js/vendor.77aa12cd.js","lineno":1,"colno":80211,"in_app":false},
            {"function":"sentryWrapped","filename":"https://shop.example.com/static/js/vendor.77aa12cd.js","lineno":1,"colno":1200,"in_app":false},
            {"filename":"https://shop.example.com/static/js/main.3f9a2c1b.js?v=2","lineno":1,"colno":4242,"in_app":true},
            {"function":"n","filename":"https://shop.example.com/static/js/main.3f9a2c1b.js","lineno":1,"colno":99,"in_app":true}]}}]}"#,
    );
}

#[test]
fn firefox_names_match_chrome_names() {
    let chrome = r#"{"platform":"javascript","exception":[{"type":"TypeError","value":"x","stacktrace":{"frames":[
        {"function":"HTMLButtonElement.onClick","filename":"https://a.example.com/app.js","lineno":3,"in_app":true},
        {"function":"Object.renderCart","filename":"https://a.example.com/app.js","lineno":9,"in_app":true}]}}]}"#;
    let firefox = r#"{"platform":"javascript","exception":[{"type":"TypeError","value":"x","stacktrace":{"frames":[
        {"function":"onClick","filename":"https://a.example.com/app.js","lineno":3,"colno":5,"in_app":true},
        {"function":"renderCart/<","filename":"https://a.example.com/app.js","lineno":9,"colno":2,"in_app":true}]}}]}"#;
    let a = explain(&tracefold_model::parse_event_str(chrome).unwrap(), &GroupingConfig::default());
    let b = explain(&tracefold_model::parse_event_str(firefox).unwrap(), &GroupingConfig::default());
    assert_eq!(a.fingerprint, b.fingerprint);
    check("javascript_firefox", firefox);
}

#[test]
fn chained_python_exceptions_and_recursion() {
    check(
        "python_chained_recursive",
        r#"{"platform":"python","exception":[
            {"type":"ConnectionResetError","value":"[Errno 104] Connection reset by peer","stacktrace":{"frames":[
                {"function":"recv","module":"socket","filename":"socket.py","lineno":704,"in_app":false}]}},
            {"type":"OperationalError","value":"server closed the connection unexpectedly","mechanism":{"type":"chained"},"stacktrace":{"frames":[
                {"function":"run_until_complete","module":"asyncio.base_events","filename":"asyncio/base_events.py","lineno":649,"in_app":false},
                {"function":"handle","module":"app.worker","filename":"app/worker.py","lineno":10,"in_app":true},
                {"function":"walk","module":"app.tree","filename":"app/tree.py","lineno":31,"in_app":true},
                {"function":"walk","module":"app.tree","filename":"app/tree.py","lineno":31,"in_app":true},
                {"function":"walk","module":"app.tree","filename":"app/tree.py","lineno":31,"in_app":true},
                {"function":"execute","module":"psycopg2.extensions","filename":"psycopg2/extensions.py","lineno":88,"in_app":false}]}}]}"#,
    );
}

#[test]
fn rust_panic_and_go_panic_borders() {
    check(
        "rust_panic",
        r#"{"platform":"rust","exception":[{"type":"panic","value":"called `Option::unwrap()` on a `None` value","mechanism":{"type":"panic","synthetic":true},"stacktrace":{"frames":[
            {"function":"std::rt::lang_start::h0123456789abcdef"},
            {"function":"edge::main::h1111111111111111","filename":"src/main.rs","lineno":12},
            {"function":"edge::cart::total::h2222222222222222","filename":"src/cart.rs","lineno":88},
            {"function":"core::option::unwrap_failed","filename":"core/src/option.rs","lineno":2015},
            {"function":"core::panicking::panic","filename":"core/src/panicking.rs","lineno":145},
            {"function":"rust_begin_unwind","filename":"std/src/panicking.rs","lineno":665}]}}]}"#,
    );
    check(
        "go_panic",
        r#"{"platform":"go","exception":[{"type":"runtime.Error","value":"invalid memory address or nil pointer dereference","stacktrace":{"frames":[
            {"function":"runtime.main","module":"runtime","filename":"proc.go","lineno":272},
            {"function":"main.main","module":"main","filename":"main.go","lineno":20},
            {"function":"main.serve.func1","module":"main","filename":"server.go","lineno":51},
            {"function":"runtime.panicmem","module":"runtime","filename":"panic.go","lineno":261},
            {"function":"runtime.sigpanic","module":"runtime","filename":"signal_unix.go","lineno":861}]}}]}"#,
    );
}

#[test]
fn java_dotnet_ruby_php_generated_names() {
    check(
        "java_cglib_lambda",
        r#"{"platform":"java","exception":[{"type":"java.lang.IllegalStateException","value":"order 42 closed","stacktrace":{"frames":[
            {"function":"run","module":"java.lang.Thread","filename":"Thread.java","lineno":833},
            {"function":"lambda$submit$0","module":"com.example.orders.OrderService","filename":"OrderService.java","lineno":77,"in_app":true},
            {"function":"close","module":"com.example.orders.OrderService$$EnhancerBySpringCGLIB$$a1b2c3","filename":"<generated>","in_app":true},
            {"function":"invoke","module":"jdk.internal.reflect.GeneratedMethodAccessor123","in_app":false}]}}]}"#,
    );
    check(
        "csharp_async",
        r#"{"platform":"csharp","exception":[{"type":"System.InvalidOperationException","value":"Sequence contains no elements","stacktrace":{"frames":[
            {"function":"<Main>b__0_1","module":"Shop.Program","in_app":true},
            {"function":"MoveNext","module":"Shop.Checkout+<PayAsync>d__12","in_app":true},
            {"function":"First","module":"System.Linq.Enumerable","in_app":false}]}}]}"#,
    );
    check(
        "ruby_blocks",
        r#"{"platform":"ruby","exception":[{"type":"NoMethodError","value":"undefined method `name' for nil","stacktrace":{"frames":[
            {"function":"block (2 levels) in call","filename":"gems/rack-3.1.8/lib/rack/builder.rb","lineno":10,"in_app":false},
            {"function":"block in show","filename":"app/controllers/users_controller.rb","lineno":14,"in_app":true},
            {"function":"_app_views_users_show_html_erb__123_456","filename":"app/views/users/show.html.erb","lineno":3,"in_app":true}]}}]}"#,
    );
    check(
        "php_anonymous_class",
        r#"{"platform":"php","exception":[{"type":"TypeError","value":"Argument #1 must be of type int, string given","stacktrace":{"frames":[
            {"function":"handle","filename":"vendor/laravel/framework/src/Illuminate/Pipeline/Pipeline.php","lineno":180,"in_app":false},
            {"function":"class@anonymous/app/Http/Kernel.php:12$0::handle","filename":"app/Http/Kernel.php","lineno":14,"in_app":true},
            {"function":"App\\Http\\Controllers\\CartController::add","filename":"app/Http/Controllers/CartController.php","lineno":40,"in_app":true}]}}]}"#,
    );
}

#[test]
fn message_events_and_custom_fingerprints() {
    check(
        "message_parameterized",
        r#"{"platform":"python","logentry":{"formatted":"payment 8f14e45f-ceea-467a-9575-6d4d1fd4c0e1 failed for bob@example.com after 250ms at 2026-11-26T05:39:00Z"}}"#,
    );
    check(
        "custom_fingerprint_with_default",
        r#"{"platform":"node","fingerprint":["{{ default }}","tenant-a"],"exception":[{"type":"Error","value":"boom","stacktrace":{"frames":[
            {"function":"processTicksAndRejections","filename":"node:internal/process/task_queues","lineno":95,"in_app":false},
            {"function":"async CartService.load","filename":"/app/src/cart/service.js","lineno":40,"in_app":true}]}}]}"#,
    );
}

/// Crashes whose exception has no stack (native and JVM SDKs): the stack of the thread the
/// exception names, else of the crashed thread, groups it; two code paths that crash with the
/// same message are two issues; without threads the message groups as before.
#[test]
fn exceptions_without_a_stack_take_their_thread_stack() {
    let crash = |thread_id: &str, crashed_stack: &str| {
        format!(
            r#"{{"platform":"native","exception":[{{"type":"SIGSEGV","value":"Segfault at 0x0"{thread_id}}}],"threads":[
            {{"id":1,"name":"main","current":true,"stacktrace":{{"frames":[
                {{"function":"main","filename":"src/main.c","in_app":true}},
                {{"function":"event_loop_wait","filename":"src/loop.c","in_app":true}}]}}}},
            {{"id":7,"name":"рабочий-7","crashed":true,"stacktrace":{{"frames":[{crashed_stack}]}}}}]}}"#
        )
    };
    let parse_stack = r#"{"function":"worker_run","filename":"src/worker.c","in_app":true},
                {"function":"parse_header","filename":"src/http/parse.c","lineno":88,"in_app":true}"#;
    let flush_stack = r#"{"function":"worker_run","filename":"src/worker.c","in_app":true},
                {"function":"flush_cache","filename":"src/cache.c","lineno":12,"in_app":true}"#;
    let by_id = crash(r#","thread_id":7"#, parse_stack);
    check("thread_stack_by_thread_id", &by_id);
    check("thread_stack_of_crashed_thread", &crash("", flush_stack));
    let fp = |json: &str| explain(&tracefold_model::parse_event_str(json).unwrap(), &GroupingConfig::default());
    // Found by id or by the crashed mark: the same stack, the same issue.
    assert_eq!(fp(&by_id).fingerprint, fp(&crash("", parse_stack)).fingerprint);
    // The same message from another code path: another issue.
    assert_ne!(fp(&crash("", parse_stack)).fingerprint, fp(&crash("", flush_stack)).fingerprint);
    // Without threads the message groups, as before.
    let bare = r#"{"platform":"native","exception":[{"type":"SIGSEGV","value":"Segfault at 0x0"}]}"#;
    assert_eq!(fp(bare).basis, "exception");
    assert!(fp(bare).components.iter().any(|c| c.kind == "value" && c.contributes));
}

/// Log lines without a template: quoted values and path segments with ids become
/// placeholders, and the explanation shows the parameterized line.
#[test]
fn log_messages_with_quoted_values_and_paths() {
    check(
        "message_quoted_values_and_paths",
        r#"{"platform":"python","message":"could not sync user 'Zoë Ørsted': open /var/data/user8812/export_77.csv failed (\"disk full\") in `main`, can't retry"}"#,
    );
    let fp = |m: &str| {
        let json = serde_json::json!({ "message": m }).to_string();
        explain(&tracefold_model::parse_event_str(&json).unwrap(), &GroupingConfig::default()).fingerprint
    };
    assert_eq!(
        fp("could not sync user 'alice': open /var/data/user1/export_5.csv failed"),
        fp("could not sync user '山田 太郎': open /var/data/user8812/export_77.csv failed"),
    );
    assert_ne!(
        fp("could not sync user 'alice': open /var/data/user1/export_5.csv failed"),
        fp("could not load user 'alice': open /var/data/user1/export_5.csv failed"),
    );
}
