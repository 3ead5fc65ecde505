"""Conversation trees as a whole: the issue's reproduction, random operation sequences against
a model of the tree (hypothesis), and 20 concurrent writes on one room."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from tests.chat.trees import (
    BLOCK,
    FAIL,
    Chat,
    demo_text,
    expected_status,
    script_prompts,
    text_parts,
)
from tests.helpers import bearer, sign_in

SOAK = bool(os.environ.get("GB_SOAK"))
EXAMPLES = 400 if SOAK else 30
MAX_OPERATIONS = 12 if SOAK else 6
CONCURRENT_TRIALS = 20 if SOAK else 1
# Quota and the room cap lifted: the examples share one user (a fresh room each).
LIFTED = {
    "basic_daily_limit": 1_000_000,
    "send_per_minute": 1_000_000,
    "max_chatrooms_per_user": 1_000_000,
}


@pytest.fixture
def settings_overrides():
    return LIFTED


@pytest.fixture
async def alice(client):
    return Chat(client, bearer(await sign_in(client)))


@pytest.fixture
async def scripted(app):
    script = script_prompts(app)
    yield script
    script.gate.set()


def ids(messages):
    return [m["id"] for m in messages]


async def test_a_retry_of_an_older_reply_answers_its_own_question(alice):
    room = await alice.room()
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    assert second["final"]["content"] == demo_text(
        "second question", [first["message_id"], first["reply_id"]]
    )
    retry = await alice.accepted(await alice.retry(room, first["reply_id"]))
    reply = retry["final"]
    assert reply["content"] == 'Demo reply (context: 0 earlier messages []) to: "first question"'
    assert reply["parent_id"] == reply["reply_to"] == first["message_id"]
    assert reply["sibling_ids"] == [first["reply_id"], retry["reply_id"]]
    tree = await alice.tree(room)
    assert tree["active_leaf_id"] == retry["reply_id"]
    assert ids((await alice.detail(room))["messages"]) == [first["message_id"], retry["reply_id"]]
    # The second exchange is untouched, in the branch of the first version.
    old = {m["id"]: m for m in tree["messages"]}
    assert old[second["message_id"]]["parent_id"] == first["reply_id"]
    assert old[second["reply_id"]]["content"] == second["final"]["content"]
    # The next send continues from the new version, and its model sees that branch alone.
    third = await alice.exchange(room, "third question")
    assert third["user_message"]["parent_id"] == retry["reply_id"]
    assert third["final"]["content"] == demo_text(
        "third question", [first["message_id"], retry["reply_id"]]
    )


# --- random operation sequences against a model of the tree ---------------------------------


@dataclass
class Node:
    id: int
    room: int
    parent: int | None
    role: str
    content: str  # a user message's; replies are checked against the demo model's text
    status: str
    source: int | None = None  # the original message a fork copied


@dataclass
class Tree:
    """What the API must hold: every message's parent, role and status, each room's leaf."""

    rooms: list[int]
    nodes: dict[int, Node] = field(default_factory=dict)
    active: dict[int, int | None] = field(default_factory=dict)

    def in_room(self, room: int) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.room == room)

    def siblings(self, message_id: int) -> list[int]:
        node = self.nodes[message_id]
        return sorted(
            i for i, n in self.nodes.items() if n.room == node.room and n.parent == node.parent
        )

    def path(self, leaf: int | None) -> list[int]:
        path: list[int] = []
        while leaf is not None:
            path.append(leaf)
            leaf = self.nodes[leaf].parent
        return path[::-1]

    def children(self, message_id: int) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n.parent == message_id)

    def newest_leaf(self, message_id: int) -> int:
        while children := self.children(message_id):
            message_id = max(children)
        return message_id

    def context(self, user_message: int) -> list[int]:
        return [
            i
            for i in self.path(user_message)[:-1]
            if self.nodes[i].role == "user" or self.nodes[i].status == "completed"
        ]

    def add_reply(self, room: int, user_message: int, receipt: dict) -> None:
        reply = receipt["reply_id"]
        assert receipt["reply"]["parent_id"] == user_message
        status = expected_status(self.nodes[user_message].content)
        assert receipt["final"]["status"] == status
        self.nodes[reply] = Node(reply, room, user_message, "assistant", "", status)
        self.active[room] = reply

    def add_exchange(self, room: int, receipt: dict, parent: int | None, content: str) -> None:
        user = receipt["message_id"]
        assert receipt["user_message"]["parent_id"] == parent
        self.nodes[user] = Node(user, room, parent, "user", content, "completed")
        self.add_reply(room, user, receipt)


# A plain send twice as often: it is what follows a switch or a fork in use.
KINDS = ["send", "send", "send_under", "edit", "retry", "switch", "fork"]
# (kind, which message, which room, how the prompt starts: a failed or blocked reply at times)
OPERATIONS = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 63),
    st.integers(0, 63),
    st.sampled_from(["q", "q", "q", "q", FAIL, BLOCK]),
)


async def apply(chat: Chat, model: Tree, operation: tuple, n: int) -> None:
    kind, pick, room_pick, prefix = operation
    room = model.rooms[room_pick % len(model.rooms)]
    messages = model.in_room(room)
    users = [i for i in messages if model.nodes[i].role == "user"]
    content = f"{prefix} {n}"
    target = messages[pick % len(messages)] if messages else None
    if kind == "send_under" and target is not None:
        receipt = await chat.exchange(room, content, target)
        model.add_exchange(room, receipt, target, content)
    elif kind == "edit" and users:
        edited = users[pick % len(users)]
        receipt = await chat.accepted(await chat.edit(room, edited, content))
        model.add_exchange(room, receipt, model.nodes[edited].parent, content)
    elif kind == "retry" and target is not None:
        node = model.nodes[target]
        user = target if node.role == "user" else node.parent
        assert user is not None
        receipt = await chat.accepted(await chat.retry(room, target))
        assert receipt["message_id"] == user
        model.add_reply(room, user, receipt)
    elif kind == "switch" and target is not None:
        response = await chat.activate(room, target)
        assert response.status_code == 200, response.text
        model.active[room] = model.newest_leaf(target)
        switched = response.json()
        assert switched["active_leaf_id"] == model.active[room]
        assert ids(switched["messages"]) == model.path(model.active[room])[-50:]
    elif kind == "fork" and target is not None:
        await fork(chat, model, room, target)
    else:  # a plain send, also what any other operation is in an empty room
        parent = model.active.get(room)
        receipt = await chat.exchange(room, content)
        model.add_exchange(room, receipt, parent, content)


async def fork(chat: Chat, model: Tree, room: int, target: int) -> None:
    response = await chat.fork(room, target)
    assert response.status_code == 201, response.text
    forked = response.json()
    copies = ids(forked["messages"])
    path = model.path(target)
    assert len(copies) == len(path)
    assert forked["active_leaf_id"] == copies[-1]
    assert [m["parent_id"] for m in forked["messages"]] == [None, *copies[:-1]]
    model.rooms.append(forked["id"])
    parent: int | None = None
    for original, copy in zip(path, copies, strict=True):
        was = model.nodes[original]
        source = was.source or was.id
        model.nodes[copy] = Node(
            copy, forked["id"], parent, was.role, was.content, was.status, source
        )
        parent = copy
    model.active[forked["id"]] = copies[-1]


async def check(chat: Chat, model: Tree) -> None:
    trees = {room: await chat.tree(room) for room in model.rooms}
    api = {m["id"]: m for tree in trees.values() for m in tree["messages"]}
    for room, tree in trees.items():
        assert ids(tree["messages"]) == model.in_room(room)
        assert tree["active_leaf_id"] == model.active.get(room)
        for message in tree["messages"]:
            check_message(model, api, room, message)
        path = model.path(model.active.get(room))
        detail = await chat.detail(room)
        assert detail["active_leaf_id"] == model.active.get(room)
        assert detail["messages"] == [api[i] for i in path[-50:]]
        assert await chat.history(room, 3) == [api[i] for i in path]
    await check_switches(chat, model)


async def check_switches(chat: Chat, model: Tree) -> None:
    """A switch to each message with more than one child goes down the newest children, and
    a send then continues from there (the operations switch to random messages, often ones
    with no choice below them, and do not always send next)."""
    for room in model.rooms:
        forks = [i for i in model.in_room(room) if len(model.children(i)) > 1]
        for message_id in forks:
            response = await chat.activate(room, message_id)
            assert response.status_code == 200, response.text
            leaf = model.newest_leaf(message_id)
            assert response.json()["active_leaf_id"] == leaf
            assert ids(response.json()["messages"]) == model.path(leaf)[-50:]
            model.active[room] = leaf
        if forks:  # and a send goes on from the leaf the last switch chose
            receipt = await chat.exchange(room, "after the switches")
            model.add_exchange(room, receipt, model.active[room], "after the switches")
            context = model.context(receipt["message_id"])
            assert receipt["final"]["content"] == demo_text("after the switches", context)


def check_message(model: Tree, api: dict, room: int, message: dict) -> None:
    node = model.nodes[message["id"]]
    got = (message["chatroom_id"], message["parent_id"], message["role"], message["status"])
    assert got == (room, node.parent, node.role, node.status), message
    assert message["sibling_ids"] == model.siblings(node.id)
    assert message["parts"] == text_parts(message["content"])
    if node.role == "user":
        assert message["content"] == node.content
        return
    assert message["reply_to"] == node.parent
    if node.source is not None:
        assert message["content"] == api[node.source]["content"]
    elif node.status == "completed":
        assert node.parent is not None
        prompt = model.nodes[node.parent].content
        assert message["content"] == demo_text(prompt, model.context(node.parent))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    # No explain phase: it reruns the failing case many times over for little here.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    # One app and user for all examples; each example has a room of its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=st.lists(OPERATIONS, min_size=1, max_size=MAX_OPERATIONS))
async def test_the_tree_is_the_model_s_after_any_operations(alice, scripted, operations):
    note(f"operations: {operations}")
    model = Tree(rooms=[await alice.room()])
    for n, operation in enumerate(operations):
        await apply(alice, model, operation, n)
    await check(alice, model)


# --- 20 concurrent writes on one room ---------------------------------------------------------

DAILY_LIMIT = 15
CONTEXT = re.compile(r"^Demo reply \(context: \d+ earlier messages? \[([\d, ]*)\]\) to: ")


@pytest.mark.parametrize(
    "settings_overrides",
    # Replies that take a few milliseconds, to overlap the writes that race them.
    [{"basic_daily_limit": DAILY_LIMIT, "send_per_minute": 1000, "demo_chunk_delay_ms": 3}],
)
async def test_twenty_concurrent_edits_retries_and_sends_on_one_room(client, scripted):
    for _ in range(CONCURRENT_TRIALS):
        await concurrent_trial(Chat(client, bearer(await sign_in(client))))


def operations_on(setup: list[dict]) -> list[tuple[str, int | None, str]]:
    """Interleaved (requests start in this order): retries and edits of one message close
    together, so some meet a reply still in progress, and the last ones meet a spent quota."""
    u = [e["message_id"] for e in setup]
    r = [e["reply_id"] for e in setup]
    return [
        ("send", None, "s0"),
        ("retry", r[0], ""),
        ("edit", u[0], "e0"),
        ("retry", r[0], ""),
        ("send", r[0], "p0"),
        ("edit", u[1], f"{FAIL} e1"),
        ("retry", u[1], ""),
        ("send", None, f"{FAIL} s1"),
        ("edit", u[2], "e2"),
        ("retry", r[2], ""),
        ("send", None, "s2"),
        ("edit", u[1], "e3"),
        ("retry", r[1], ""),
        ("send", u[1], f"{FAIL} p1"),
        ("edit", u[0], f"{BLOCK} e4"),
        ("retry", u[2], ""),
        ("send", None, f"{BLOCK} s3"),
        ("edit", u[2], "e5"),
        ("send", r[1], "p2"),
        ("send", None, "s4"),
    ]


async def concurrent_trial(chat: Chat) -> None:
    room = await chat.room()
    setup = [await chat.exchange(room, f"question {n}") for n in range(3)]
    operations = operations_on(setup)
    assert len(operations) == 20

    async def run(kind: str, target: int | None, content: str):
        if kind == "send":
            return await chat.send(room, content, target)
        assert target is not None
        if kind == "edit":
            return await chat.edit(room, target, content)
        return await chat.retry(room, target)

    responses = await asyncio.gather(*(run(*operation) for operation in operations))
    accepted = []
    for (kind, target, _), response in zip(operations, responses, strict=True):
        assert response.status_code in {202, 409, 429}, response.text
        if response.status_code == 409:
            assert kind in {"edit", "retry"}, response.text
            assert response.json()["code"] == "reply_in_progress"
        elif response.status_code == 429:
            assert response.json()["code"] == "daily_limit_reached"
        else:
            accepted.append((kind, target, response.json()))
    finals = {}
    for _, _, receipt in accepted:  # every accepted request has its reply, finished
        final = await chat.finish(receipt)
        assert final["status"] == expected_status(receipt["user_message"]["content"]), final
        finals[receipt["reply_id"]] = final

    tree = await chat.tree(room)
    api = {m["id"]: m for m in tree["messages"]}
    new = {i for _, _, r in accepted for i in (r["message_id"], r["reply_id"])}
    assert set(api) == {i for e in setup for i in (e["message_id"], e["reply_id"])} | new
    check_links(api, room)
    for kind, target, receipt in accepted:
        check_placement(api, kind, target, receipt)
    leaf = tree["active_leaf_id"]
    assert leaf in {r["reply_id"] for _, _, r in accepted}
    assert not [m for m in api.values() if m["parent_id"] == leaf]
    detail = await chat.detail(room)
    assert ids(detail["messages"]) == path_of(api, leaf)[-50:]
    for reply_id in finals:
        check_recorded_context(api, reply_id)

    # Each accepted request took one slot, each failed or blocked reply gave its own back.
    used = await chat.used_today()
    given_back = sum(1 for f in finals.values() if f["status"] != "completed")
    assert used == len(setup) + len(accepted) - given_back
    assert used == sum(
        1 for m in api.values() if m["status"] == "completed" and m["role"] != "user"
    )
    assert used <= DAILY_LIMIT
    if any(r.status_code == 429 for r in responses):
        assert len(accepted) >= DAILY_LIMIT - len(setup)


def path_of(api: dict, leaf: int | None) -> list[int]:
    path: list[int] = []
    while leaf is not None:
        path.append(leaf)
        leaf = api[leaf]["parent_id"]
    return path[::-1]


def check_links(api: dict, room: int) -> None:
    """One parent per message, in the same room (or none), older than it; a reply's parent is
    the user message it answers; sibling lists are the parent's children."""
    for message in api.values():
        parent = message["parent_id"]
        assert message["chatroom_id"] == room
        assert parent is None or (parent in api and parent < message["id"]), message
        if message["role"] == "assistant":
            assert parent == message["reply_to"]
            assert api[parent]["role"] == "user"
        siblings = sorted(i for i, m in api.items() if m["parent_id"] == parent)
        assert message["sibling_ids"] == siblings


def check_placement(api: dict, kind: str, target: int | None, receipt: dict) -> None:
    user, reply = api[receipt["message_id"]], api[receipt["reply_id"]]
    assert reply["parent_id"] == user["id"]
    if kind == "retry":
        assert target is not None
        assert user["id"] == (target if api[target]["role"] == "user" else api[target]["parent_id"])
    elif kind == "edit":
        assert target is not None
        assert user["parent_id"] == api[target]["parent_id"]
    elif target is not None:
        assert user["parent_id"] == target
    else:  # continues from the active leaf when it committed: a reply
        assert api[user["parent_id"]]["role"] == "assistant"


def check_recorded_context(api: dict, reply_id: int) -> None:
    """A completed reply names the user messages on its path and the replies on it that had
    completed when it was produced (a reply it follows may have been still in progress)."""
    reply = api[reply_id]
    if reply["status"] != "completed":
        return
    found = CONTEXT.match(reply["content"])
    assert found, reply["content"]
    named = [int(i) for i in found.group(1).split(", ") if i]
    ancestors = path_of(api, reply["parent_id"])[:-1]
    assert named == [i for i in ancestors if i in set(named)], (named, ancestors)
    users = [i for i in ancestors if api[i]["role"] == "user"]
    done = {i for i in ancestors if api[i]["status"] == "completed"}
    assert set(users) <= set(named) <= set(users) | done, (named, ancestors)
    assert reply["content"] == demo_text(api[reply["parent_id"]]["content"], named)
