"""Authentication: OTP sign-in-or-up, passwords, JWT access tokens, rotating refresh tokens."""
