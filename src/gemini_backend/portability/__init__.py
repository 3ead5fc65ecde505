"""What a user can take out, show and erase: share links, export, import, account deletion."""
