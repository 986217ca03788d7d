"""The payment gateway the tests run as a process of its own: Apex's sandbox
(`apex.billing.sandbox`, the subset of Stripe's REST API Apex uses), served alone.

Run: python -m tests.harness.payments_server --port PORT
"""

from apex.billing.sandbox import main

if __name__ == "__main__":
    main()
