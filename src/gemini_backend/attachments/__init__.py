"""Files uploaded to a chatroom and sent with its messages: the bytes in a `Storage` (local
files or an S3-compatible bucket), the record in the `attachments` table."""
