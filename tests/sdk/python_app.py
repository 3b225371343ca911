"""A small application that reports errors with the real Sentry Python SDK.

Usage: python3 python_app.py DSN
Raises errors from several code paths, with users and releases, then flushes. The test that
runs it (tests/sentry_sdk.rs) knows how many events of each bug it sends:
  load_profile      KeyError           5 events (different user ids in the message)
  compute_ratio     ZeroDivisionError  3 events
  charge_card       PaymentDeclined    2 events via checkout, 2 via subscribe (captured
                                       explicitly; the caller is next to the crash, so
                                       these are two issues, as in Sentry)
  capture_message   "payment N failed" 2 events (ids in the message)
"""
import sys

import sentry_sdk


class PaymentDeclined(Exception):
    pass


def load_profile(user_id):
    profiles = {}
    return profiles["user-%d" % user_id]


def compute_ratio(a, b):
    return a / b


def charge_card(amount):
    raise PaymentDeclined("card declined for amount %d" % amount)


def checkout(amount):
    try:
        charge_card(amount)
    except PaymentDeclined as e:
        sentry_sdk.capture_exception(e)


def subscribe(amount):
    try:
        charge_card(amount)
    except PaymentDeclined as e:
        sentry_sdk.capture_exception(e)


def main():
    dsn = sys.argv[1]
    sentry_sdk.init(dsn=dsn, release="pyapp@1.0.0", environment="test", default_integrations=False)
    for i in range(5):
        sentry_sdk.set_user({"id": str(i)})
        try:
            load_profile(i)
        except KeyError as e:
            sentry_sdk.capture_exception(e)
    for i in range(3):
        sentry_sdk.set_user({"id": "ratio-%d" % i})
        try:
            compute_ratio(i, 0)
        except ZeroDivisionError as e:
            sentry_sdk.capture_exception(e)
    sentry_sdk.set_user({"id": "buyer"})
    for amount in (10, 20):
        checkout(amount)
        subscribe(amount)
    for i in range(2):
        sentry_sdk.capture_message("payment %d failed" % (1000 + i), level="warning")
    sentry_sdk.flush(timeout=20)


if __name__ == "__main__":
    main()
