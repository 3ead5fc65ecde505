"""Every table of the service, imported in one place for Alembic and the tests."""

from gemini_backend.attachments.models import Attachment, StorageDeletion
from gemini_backend.auth.models import AuthGuard, AuthSession, OtpCode, RefreshToken
from gemini_backend.billing.models import StripeEvent, StripeSubscription, Subscription
from gemini_backend.chat.models import Chatroom, IdempotencyKey, Message
from gemini_backend.core.db import Base
from gemini_backend.portability.models import Share
from gemini_backend.quota.models import DailyUsage, MonthlyTokens, TokenReservation
from gemini_backend.users.models import User

metadata = Base.metadata

__all__ = [
    "Attachment",
    "AuthGuard",
    "AuthSession",
    "Chatroom",
    "DailyUsage",
    "IdempotencyKey",
    "Message",
    "MonthlyTokens",
    "OtpCode",
    "RefreshToken",
    "Share",
    "StorageDeletion",
    "StripeEvent",
    "StripeSubscription",
    "Subscription",
    "TokenReservation",
    "User",
    "metadata",
]
