"""The long-lived objects of a process (API or worker), built once from the settings: the
composition root. The app's state holds only a `Services` (`app.state.services`); routes reach
it through `services_of(request)` or the `ServicesDep` dependency.

This is the one place that chooses between the embedded and the production implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import structlog
from fastapi import Depends
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import HTTPConnection

from gemini_backend.ai.base import Provider
from gemini_backend.ai.registry import ProviderRegistry
from gemini_backend.attachments.service import Attachments
from gemini_backend.attachments.storage import create_storage
from gemini_backend.auth.delivery import create_otp_sender
from gemini_backend.auth.phone import normalize_test_number
from gemini_backend.auth.principals import Principals
from gemini_backend.auth.service import AuthDeps
from gemini_backend.billing.gateway import StripeGateway, create_gateway
from gemini_backend.billing.mock import MockStripe
from gemini_backend.chat import repository as chat_repo
from gemini_backend.chat.cache import ChatroomCache, MemoryLists, RedisLists
from gemini_backend.chat.generation import ReplyGenerator
from gemini_backend.chat.replies import StreamSlots
from gemini_backend.chat.sending import MessageSender
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache, MemoryCache, RedisCache
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import Database
from gemini_backend.core.jobs import RedisJobQueue
from gemini_backend.core.redis import create_redis
from gemini_backend.core.security import PasswordHasher, TokenCodec
from gemini_backend.core.streams import MemoryReplyStream, RedisReplyStream, ReplyStream
from gemini_backend.core.throttle import Throttle
from gemini_backend.quota.service import Quota
from gemini_backend.search.repository import PostgresqlSearch, Searcher, SqliteSearch
from gemini_backend.worker.housekeeping import Housekeeping
from gemini_backend.worker.runtime import (
    InProcessReplyPipeline,
    ReplyPipeline,
    StreamReplyPipeline,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis


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
    models: ProviderRegistry  # the catalogue, and one provider per model
    quota: Quota
    pipeline: ReplyPipeline
    stripe: StripeGateway | None
    # The built-in Stripe mock (served by the API when no Stripe key is set).
    stripe_mock: MockStripe | None
    # The API's: a sender holds no per-request state (a send takes its own connection).
    message_sender: MessageSender
    auth: AuthDeps  # the password hasher, the token codec, the OTP sender
    stream_slots: StreamSlots
    attachments: Attachments  # with its storage: local files or an S3-compatible bucket
    search: Searcher  # GET /search: PostgreSQL full-text search or SQLite FTS5

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
        models = ProviderRegistry.from_settings(settings)
        attachments = Attachments(settings, clock, database.sessionmaker, create_storage(settings))
        chatroom_cache = ChatroomCache(
            RedisLists(redis, prefix) if redis is not None else MemoryLists(cache),
            settings.chatroom_cache_ttl,
            local_seconds=settings.chatroom_local_cache_seconds,
            redis=redis,
            prefix=prefix,
        )
        principals = Principals(
            database.autocommit_engine,
            settings.principal_cache_seconds,
            redis=redis,
            channel=f"{prefix}:principal-changed",
        )
        throttle = Throttle.from_settings(settings)
        # The one place that asks which database this is.
        on_postgresql = database.engine.dialect.name == "postgresql"
        chat_sql = chat_repo.POSTGRESQL if on_postgresql else chat_repo.SQLITE
        search: Searcher = (
            PostgresqlSearch(settings.search_text_config) if on_postgresql else SqliteSearch()
        )
        quota = Quota(settings, postgresql.insert if on_postgresql else sqlite.insert)
        generator = ReplyGenerator(
            settings=settings,
            clock=clock,
            sessionmaker=database.sessionmaker,
            autocommit_sessionmaker=database.autocommit_sessionmaker,
            models=models,
            streams=streams,
            cache=cache,
            quota=quota,
            chatrooms=chatroom_cache,
            statements=chat_sql,
            attachments=attachments,
        )
        housekeeping = Housekeeping(settings, clock, database.sessionmaker, attachments)
        pipeline: ReplyPipeline
        if settings.is_production_mode:
            assert redis is not None
            jobs = RedisJobQueue(redis, settings)
            pipeline = StreamReplyPipeline(settings, jobs, generator, housekeeping)
        else:
            pipeline = InProcessReplyPipeline(settings, generator, housekeeping)
        return cls(
            settings=settings,
            clock=clock,
            database=database,
            redis=redis,
            principals=principals,
            throttle=throttle,
            cache=cache,
            chatroom_cache=chatroom_cache,
            reply_streams=streams,
            models=models,
            quota=quota,
            pipeline=pipeline,
            stripe=create_gateway(settings),
            stripe_mock=(
                MockStripe(
                    RedisCache(redis, prefix) if redis is not None else MemoryCache(), settings
                )
                if settings.stripe_mock_enabled
                else None
            ),
            message_sender=MessageSender(
                database=database,
                settings=settings,
                clock=clock,
                quota=quota,
                throttle=throttle,
                queue=pipeline,
                chatrooms=chatroom_cache,
                streams=streams,
                cache=cache,
                statements=chat_sql,
                attachments=attachments,
                # One round trip for the job and the invalidation when both are on Redis.
                enqueue_with_invalidation=pipeline.queues_on_redis and redis is not None,
            ),
            auth=AuthDeps(
                settings=settings,
                clock=clock,
                hasher=PasswordHasher(
                    settings.password_hash_concurrency,
                    settings.password_hash_queue,
                    hasher=Argon2Hasher(
                        time_cost=settings.password_hash_time_cost,
                        memory_cost=settings.password_hash_memory_kib,
                    ),
                ),
                tokens=TokenCodec(settings.jwt_secret_value(), settings.access_token_ttl_seconds),
                throttle=throttle,
                test_numbers={
                    normalize_test_number(number, settings.default_phone_region): code
                    for number, code in settings.otp_test_numbers.items()
                },
                principals=principals,
                otp_sender=create_otp_sender(settings),
            ),
            stream_slots=StreamSlots(settings.max_streams_per_user),
            attachments=attachments,
            search=search,
        )

    async def check_search(self) -> None:
        """Refuse to start on a search the database cannot serve (SEARCH_TEXT_CONFIG names no
        configuration, or not the one the search columns were built with); a database out of
        reach is /ready's to report."""
        try:
            async with self.database.engine.connect() as connection:
                problem = await self.search.check(connection)
        except (OSError, SQLAlchemyError):
            structlog.get_logger(__name__).warning("search_check_skipped", exc_info=True)
            return
        if problem is not None:
            raise RuntimeError(problem)

    @property
    def provider(self) -> Provider:
        """The default model's provider (titles, rooms without a model, /ready)."""
        return self.models.default_provider

    async def aclose(self) -> None:
        try:
            await self.auth.otp_sender.aclose()
        finally:
            await self._close_clients()

    async def _close_clients(self) -> None:
        await self.pipeline.stop()
        await self.models.aclose()  # SDK clients own pooled HTTP connections
        if self.stripe is not None:
            await self.stripe.aclose()
        await self.reply_streams.aclose()
        await self.attachments.storage.aclose()
        await self.principals.aclose()
        await self.chatroom_cache.aclose()
        await self.database.dispose()
        if self.redis is not None:
            await self.redis.aclose()


def services_of(connection: HTTPConnection) -> Services:
    """The app's services (set by main.py's lifespan): the one way a route reaches them."""
    services: Services = connection.app.state.services
    return services


async def _services(connection: HTTPConnection) -> Services:
    return services_of(connection)


ServicesDep = Annotated[Services, Depends(_services)]
