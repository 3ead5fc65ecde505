"""The daily message quota (Basic: BASIC_DAILY_LIMIT a day; Pro: PRO_DAILY_LIMIT)."""
