"""Users: the account record and `GET /user/me`."""
