"""Models and options per room, through the public API: GET /models, a room's `model`,
`temperature`, `thinking` and `grounding` validated against the model and the caller's plan,
and the reply produced by the room's model with its options."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from gemini_backend.ai.base import Delta, Finished, GenerationOptions, Usage
from gemini_backend.chat.models import Chatroom
from tests.billing.stripe_events import PERIOD, Customer, post_event
from tests.helpers import bearer, read_sse, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def test_models_lists_the_catalogue_and_the_default(client, alice):
    response = await client.get("/models", headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["default"] == "demo"
    assert body["models"] == [
        {
            "id": "demo",
            "provider": "demo",
            "display_name": "Demo (offline)",
            "context_tokens": 32768,
            "supports": ["images", "pdf", "search"],
            "tiers": ["basic", "pro"],
        },
        {
            "id": "demo-pro",
            "provider": "demo",
            "display_name": "Demo Pro (offline)",
            "context_tokens": 32768,
            "supports": ["images", "pdf", "thinking", "search"],
            "tiers": ["pro"],
        },
    ]


async def test_models_needs_a_signed_in_user(client):
    response = await client.get("/models")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


# --- a room's options: set, shown, validated ------------------------------------------------
async def go_pro(client, clock, tokens) -> Customer:
    """The user becomes Pro the way Stripe makes them: a signed subscription event."""
    customer = Customer(tokens["user"]["id"])
    now = int(clock.now().timestamp())
    await deliver(client, customer.subscription("created", "sub_1", "active", now, now + PERIOD))
    return customer


async def go_basic(client, clock, customer: Customer) -> None:
    now = int(clock.now().timestamp())
    ended = customer.subscription("deleted", "sub_1", "canceled", now + 10, now + PERIOD)
    await deliver(client, ended)


async def deliver(client, body) -> None:
    response = await post_event(client, body, body["created"])
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"


async def new_room(client, auth, **body):
    response = await client.post("/chatroom", json={"name": "r", **body}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def patch(client, auth, room_id, **body):
    return await client.patch(f"/chatroom/{room_id}", json=body, headers=auth)


def options_of(room) -> tuple:
    return room["model"], room["temperature"], room["thinking"], room["grounding"]


async def test_options_are_set_changed_and_shown_everywhere(client, alice):
    room = await new_room(client, alice, model="demo", temperature=0.3)
    assert options_of(room) == ("demo", 0.3, None, False)
    changed = await patch(client, alice, room["id"], temperature=1.5, thinking="off")
    assert changed.status_code == 200, changed.text
    assert options_of(changed.json()) == ("demo", 1.5, "off", False)
    # Only the fields sent change; null gives the default back.
    renamed = (await patch(client, alice, room["id"], name="renamed")).json()
    assert options_of(renamed) == ("demo", 1.5, "off", False)
    cleared = (await patch(client, alice, room["id"], model=None, temperature=None)).json()
    assert options_of(cleared) == (None, None, "off", False)
    # The room's body and the list (both cached) show the change.
    detail = (await client.get(f"/chatroom/{room['id']}", headers=alice)).json()
    assert options_of(detail) == (None, None, "off", False)
    listed = (await client.get("/chatroom", headers=alice)).json()["chatrooms"]
    assert [options_of(r) for r in listed] == [(None, None, "off", False)]


async def test_a_thinking_budget_is_a_number(client, clock, alice):
    tokens = await sign_in(client)
    pro = bearer(tokens)
    await go_pro(client, clock, tokens)
    room = await new_room(client, pro, model="demo-pro", thinking=2048)
    assert options_of(room) == ("demo-pro", None, 2048, False)
    high = (await patch(client, pro, room["id"], thinking="high")).json()
    assert high["thinking"] == "high"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "gpt-9"}, 422, "unknown_model"),
        ({"thinking": "high"}, 422, "unsupported_option"),  # demo: no thinking
        ({"model": "demo", "thinking": 1024}, 422, "unsupported_option"),
        ({"model": "demo-pro"}, 403, "plan_required"),
        ({"grounding": True}, 403, "plan_required"),  # demo has search; grounding is Pro
        ({"temperature": 2.5}, 422, "validation_error"),
        ({"temperature": -0.1}, 422, "validation_error"),
        ({"thinking": "extreme"}, 422, "validation_error"),
        ({"thinking": 40000}, 422, "validation_error"),
        ({"thinking": True}, 422, "validation_error"),
        ({"grounding": None}, 422, "validation_error"),
        ({"model": ""}, 422, "validation_error"),
    ],
)
async def test_bad_options_are_refused_and_change_nothing(client, alice, body, status, code):
    room = await new_room(client, alice, temperature=0.5)
    response = await patch(client, alice, room["id"], **body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]
    # Creating a room with them is refused alike, and creates nothing.
    created = await client.post("/chatroom", json={"name": "x", **body}, headers=alice)
    assert (created.status_code, created.json()["code"]) == (status, code)
    rooms = (await client.get("/chatroom", headers=alice)).json()["chatrooms"]
    assert [options_of(r) for r in rooms] == [(None, 0.5, None, False)]


async def test_pro_users_may_pick_pro_models_and_grounding(client, clock):
    tokens = await sign_in(client)
    pro = bearer(tokens)
    await go_pro(client, clock, tokens)
    room = await new_room(client, pro, model="demo-pro", grounding=True, thinking="low")
    assert options_of(room) == ("demo-pro", None, "low", True)
    # The options are checked against the model they would be used with.
    switched = await patch(client, pro, room["id"], model="demo")
    assert (switched.status_code, switched.json()["code"]) == (422, "unsupported_option")
    switched = await patch(client, pro, room["id"], model="demo", thinking=None)
    assert switched.status_code == 200, switched.text
    assert options_of(switched.json()) == ("demo", None, None, True)


async def test_a_room_keeps_its_pro_options_when_its_owner_goes_back_to_basic(client, clock):
    tokens = await sign_in(client)
    auth = bearer(tokens)
    customer = await go_pro(client, clock, tokens)
    room = await new_room(client, auth, model="demo-pro", grounding=True)
    await go_basic(client, clock, customer)
    assert (await client.get("/user/me", headers=auth)).json()["tier"] == "basic"
    # Nothing is rewritten; changing what Basic may change is allowed ...
    changed = await patch(client, auth, room["id"], temperature=0.2)
    assert changed.status_code == 200, changed.text
    assert options_of(changed.json()) == ("demo-pro", 0.2, None, True)
    # ... setting a Pro model or grounding again is not.
    again = await patch(client, auth, room["id"], model="demo-pro")
    assert (again.status_code, again.json()["code"]) == (403, "plan_required")


# --- the reply: the room's model, with its options --------------------------------------------
async def reply_to(client, auth, room_id, content="hello") -> dict:
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    assert response.json()["reply"]["model"] is None  # queued: no model has it yet
    events = await read_sse(client, response.json()["stream_url"], auth)
    assert events[-1][1] == "done", events
    final = json.loads(events[-1][2])
    stored = await client.get(f"/chatroom/{room_id}/messages/{final['id']}", headers=auth)
    assert stored.json() == final
    return final


class RecordingProvider:
    """A test double of the default model's provider: it records the options it was given."""

    name = "recording"

    def __init__(self, model: str) -> None:
        self.model = model
        self.options: list[GenerationOptions] = []

    async def stream(self, conversation, options):
        self.options.append(options)
        yield Delta("recorded")
        yield Finished("stop", Usage(1, 1, 0))

    async def title(self, first_message: str) -> str:
        return "Recorded"


def use_provider(app, provider) -> None:
    """In whichever processes make replies (the API's, and the worker's in production)."""
    for services in (app.state.services, getattr(app.state, "worker", None)):
        if services is not None:
            services.pipeline.generator.provider = provider


@pytest.mark.parametrize("settings_overrides", [{"default_model": "demo-pro"}])
async def test_the_reply_is_given_the_rooms_options_as_the_plan_allows(app, client, clock):
    recorder = RecordingProvider("demo-pro")
    use_provider(app, recorder)
    tokens = await sign_in(client)
    auth = bearer(tokens)
    customer = await go_pro(client, clock, tokens)
    room = await new_room(client, auth, temperature=0.9, thinking="high", grounding=True)
    first = await reply_to(client, auth, room["id"])
    assert (first["content"], first["model"]) == ("recorded", "demo-pro")
    await go_basic(client, clock, customer)
    await reply_to(client, auth, room["id"])
    assert recorder.options == [
        GenerationOptions(temperature=0.9, thinking="high", grounding=True),
        # Back on Basic: grounding is left out, the rest is the room's still.
        GenerationOptions(temperature=0.9, thinking="high", grounding=False),
    ]


async def test_a_pro_model_answers_while_its_owner_is_pro_then_the_default(client, clock):
    tokens = await sign_in(client)
    auth = bearer(tokens)
    customer = await go_pro(client, clock, tokens)
    room = await new_room(client, auth, model="demo-pro")
    first = await reply_to(client, auth, room["id"])
    assert first["model"] == "demo-pro"
    await go_basic(client, clock, customer)
    # The send is accepted; the default model answers it (the room keeps its model).
    second = await reply_to(client, auth, room["id"])
    assert second["model"] == "demo"
    assert second["content"].startswith("Demo reply (context: 2 earlier messages")
    shown = (await client.get(f"/chatroom/{room['id']}", headers=auth)).json()
    assert shown["model"] == "demo-pro"
    assert [m["model"] for m in shown["messages"]] == [None, "demo-pro", None, "demo"]


async def test_a_room_whose_model_is_no_longer_offered_gets_the_default(app, client, alice):
    room = await new_room(client, alice)
    # As if the room had been set to a model a later configuration no longer lists.
    async with app.state.services.database.sessionmaker() as session:
        await session.execute(
            update(Chatroom).where(Chatroom.id == room["id"]).values(model="retired-model")
        )
        await session.commit()
    reply = await reply_to(client, alice, room["id"])
    assert reply["model"] == "demo"
    assert reply["status"] == "completed"
