"""The long-lived objects of a process (API or worker), built once from the settings.

This is the one place that chooses between the embedded and the production implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from gemini_backend.ai.base import Provider
from gemini_backend.ai.factory import create_provider
from gemini_backend.auth.principals import Principals
from gemini_backend.billing.gateway import StripeGateway, create_gateway
from gemini_backend.billing.mock import MockStripe
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.generation import ReplyGenerator
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache, MemoryCache, RedisCache
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import Database
from gemini_backend.core.queue import create_broker
from gemini_backend.core.redis import create_redis
from gemini_backend.core.streams import MemoryReplyStream, RedisReplyStream, ReplyStream
from gemini_backend.core.throttle import Throttle
from gemini_backend.quota.service import Quota
from gemini_backend.worker.housekeeping import Housekeeping
from gemini_backend.worker.runtime import ReplyPipeline


@dataclass
class Services:
    settings: Settings
    clock: Clock
    database: Database
    redis: Redis | None
    principals: Principals
    throttle: Throttle
    cache: Cache
    chatroom_cache: ChatroomCache
    reply_streams: ReplyStream
    provider: Provider
    quota: Quota
    pipeline: ReplyPipeline
    stripe: StripeGateway | None
    # The built-in Stripe mock (served by the API when no Stripe key is set).
    stripe_mock: MockStripe | None

    @classmethod
    def build(cls, settings: Settings, clock: Clock) -> Services:
        database = Database(settings)
        redis = create_redis(settings)
        prefix = settings.redis_key_prefix
        cache: Cache = RedisCache(redis, prefix) if redis is not None else MemoryCache()
        streams: ReplyStream = (
            RedisReplyStream(redis, prefix, timeout=settings.redis_socket_timeout_seconds)
            if redis is not None
            else MemoryReplyStream()
        )
        provider = create_provider(settings)
        quota = Quota(settings)
        chatroom_cache = ChatroomCache(
            cache,
            settings.chatroom_cache_ttl,
            local_seconds=settings.chatroom_local_cache_seconds,
            redis=redis,
            prefix=prefix,
        )
        generator = ReplyGenerator(
            settings=settings,
            clock=clock,
            sessionmaker=database.sessionmaker,
            autocommit_sessionmaker=database.autocommit_sessionmaker,
            provider=provider,
            streams=streams,
            cache=cache,
            quota=quota,
            chatrooms=chatroom_cache,
        )
        return cls(
            settings=settings,
            clock=clock,
            database=database,
            redis=redis,
            principals=Principals(
                database.autocommit_engine,
                settings.principal_cache_seconds,
                redis=redis,
                channel=f"{prefix}:principal-changed",
            ),
            throttle=Throttle.from_settings(settings),
            cache=cache,
            chatroom_cache=chatroom_cache,
            reply_streams=streams,
            provider=provider,
            quota=quota,
            pipeline=ReplyPipeline(
                settings,
                create_broker(settings),
                generator,
                Housekeeping(settings, clock, database.sessionmaker),
            ),
            stripe=create_gateway(settings),
            stripe_mock=(
                MockStripe(
                    RedisCache(redis, prefix) if redis is not None else MemoryCache(), settings
                )
                if settings.stripe_mock_enabled
                else None
            ),
        )

    async def aclose(self) -> None:
        await self.pipeline.stop()
        close_provider = getattr(self.provider, "aclose", None)
        if close_provider is not None:  # SDK clients own pooled HTTP connections
            await close_provider()
        if self.stripe is not None:
            await self.stripe.aclose()
        await self.reply_streams.aclose()
        await self.principals.aclose()
        await self.chatroom_cache.aclose()
        await self.database.dispose()
        if self.redis is not None:
            await self.redis.aclose()
