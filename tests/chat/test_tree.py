"""Conversations as trees: send with a parent, edit, retry of any message, versions, branch
switch, the tree, fork, the active branch's pages, their errors and their quota."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from gemini_backend.chat.models import Message
from tests.chat.trees import HOLD, Chat, demo_text, script_prompts, text_parts
from tests.helpers import bearer, sign_in

# The tests send more than a Basic day's five messages; the quota tests set their own limit.
LIFTED = {"basic_daily_limit": 1000, "send_per_minute": 1000}


@pytest.fixture
def settings_overrides():
    return LIFTED


@pytest.fixture
async def alice(client):
    return Chat(client, bearer(await sign_in(client)))


@pytest.fixture
async def bob(client):
    return Chat(client, bearer(await sign_in(client)))


@pytest.fixture
async def script(app):
    """Prompts starting FAIL, BLOCK or HOLD answered as scripted; held replies end at teardown."""
    script = script_prompts(app)
    yield script
    script.gate.set()


@pytest.fixture
async def room(alice):
    return await alice.room()


def ids(messages):
    return [m["id"] for m in messages]


def by_id(tree):
    return {m["id"]: m for m in tree["messages"]}


async def test_every_message_carries_its_parent_siblings_and_parts(alice, room):
    response = await alice.send(room, "first question")
    assert response.status_code == 202, response.text
    receipt = response.json()
    user, reply = receipt["user_message"], receipt["reply"]
    assert (user["parent_id"], user["sibling_ids"]) == (None, [user["id"]])
    assert user["parts"] == text_parts("first question")
    assert (reply["parent_id"], reply["sibling_ids"]) == (user["id"], [reply["id"]])
    assert reply["parts"] == []  # queued: no text yet
    final = await alice.finish(receipt)
    assert final["content"] == demo_text("first question", [])
    assert final["parts"] == text_parts(final["content"])
    assert (final["parent_id"], final["sibling_ids"]) == (user["id"], [reply["id"]])
    tree = await alice.tree(room)
    assert tree["active_leaf_id"] == reply["id"]
    assert tree["messages"] == [user, final]
    detail = await alice.detail(room)
    assert detail["active_leaf_id"] == reply["id"]
    assert detail["messages"] == tree["messages"]


async def test_a_send_continues_from_the_active_leaf(alice, room):
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    assert second["user_message"]["parent_id"] == first["reply_id"]
    context = [first["message_id"], first["reply_id"]]
    assert second["final"]["content"] == demo_text("second question", context)
    assert (await alice.tree(room))["active_leaf_id"] == second["reply_id"]


async def test_a_send_with_a_parent_starts_a_branch_the_model_alone_sees(alice, room):
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    other = await alice.exchange(room, "another second question", first["reply_id"])
    user = other["user_message"]
    assert user["parent_id"] == first["reply_id"]
    assert user["sibling_ids"] == [second["message_id"], other["message_id"]]
    context = [first["message_id"], first["reply_id"]]  # not the other branch's messages
    assert other["final"]["content"] == demo_text("another second question", context)
    detail = await alice.detail(room)
    assert detail["active_leaf_id"] == other["reply_id"]
    assert ids(detail["messages"]) == [*context, other["message_id"], other["reply_id"]]
    tree = await alice.tree(room)
    assert len(tree["messages"]) == 6  # the first branch is kept
    assert by_id(tree)[second["message_id"]]["sibling_ids"] == user["sibling_ids"]
    # Under a user message: both are given to the model.
    under = await alice.exchange(room, "a follow-up", first["message_id"])
    assert under["user_message"]["parent_id"] == first["message_id"]
    assert under["final"]["content"] == demo_text("a follow-up", [first["message_id"]])
    siblings = by_id(await alice.tree(room))[first["reply_id"]]["sibling_ids"]
    assert siblings == [first["reply_id"], under["message_id"]]


async def test_a_parent_not_in_the_room_is_404_and_writes_nothing(alice, bob, room):
    first = await alice.exchange(room, "first question")
    elsewhere = await alice.exchange(await alice.room("other"), "elsewhere")
    theirs = await bob.exchange(await bob.room(), "bob's")
    before = await alice.tree(room)
    used = await alice.used_today()
    for parent in (elsewhere["reply_id"], theirs["message_id"], 999_999):
        response = await alice.send(room, "lost", parent)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "message_not_found"
    assert await alice.tree(room) == before
    assert await alice.used_today() == used
    assert first["final"]["status"] == "completed"


async def test_an_edit_is_a_sibling_with_its_own_reply_and_keeps_the_old_branch(alice, room):
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    edited = await alice.accepted(await alice.edit(room, second["message_id"], "2nd, better"))
    user = edited["user_message"]
    assert user["content"] == "2nd, better"
    assert user["parent_id"] == first["reply_id"]
    assert user["sibling_ids"] == [second["message_id"], edited["message_id"]]
    assert edited["reply"]["parent_id"] == edited["reply"]["reply_to"] == edited["message_id"]
    context = [first["message_id"], first["reply_id"]]
    assert edited["final"]["content"] == demo_text("2nd, better", context)
    detail = await alice.detail(room)
    assert detail["active_leaf_id"] == edited["reply_id"]
    assert ids(detail["messages"]) == [*context, edited["message_id"], edited["reply_id"]]
    tree = by_id(await alice.tree(room))
    assert tree[second["reply_id"]]["content"] == second["final"]["content"]
    assert tree[second["message_id"]]["sibling_ids"] == user["sibling_ids"]


async def test_an_edit_of_the_first_message_is_a_new_root(alice, room):
    first = await alice.exchange(room, "first question")
    await alice.exchange(room, "second question")
    edited = await alice.accepted(await alice.edit(room, first["message_id"], "1st again"))
    assert edited["user_message"]["parent_id"] is None
    assert edited["user_message"]["sibling_ids"] == [first["message_id"], edited["message_id"]]
    assert edited["final"]["content"] == demo_text("1st again", [])
    assert ids((await alice.detail(room))["messages"]) == [
        edited["message_id"],
        edited["reply_id"],
    ]


async def test_edit_refusals(alice, bob, room):
    first = await alice.exchange(room, "first question")
    reply = await alice.edit(room, first["reply_id"], "not mine to edit")
    assert reply.status_code == 400
    assert reply.json()["code"] == "not_a_user_message"
    elsewhere = await alice.exchange(await alice.room("other"), "elsewhere")
    for message_id in (elsewhere["message_id"], 999_999):
        response = await alice.edit(room, message_id, "x")
        assert response.status_code == 404
        assert response.json()["code"] == "message_not_found"
    assert (await bob.edit(room, first["message_id"], "x")).status_code == 404
    assert len((await alice.tree(room))["messages"]) == 2


async def test_edit_and_retry_wait_for_a_reply_in_progress(script, alice, room):
    first = await alice.exchange(room, "first question")
    held = await alice.send(room, f"{HOLD} second question")
    assert held.status_code == 202
    receipt = held.json()
    await asyncio.wait_for(script.holding.wait(), 10)
    for response in (
        await alice.edit(room, receipt["message_id"], "second, edited"),
        await alice.retry(room, receipt["message_id"]),
        await alice.retry(room, receipt["reply_id"]),
    ):
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "reply_in_progress"
    # Another message's reply is not in progress: editing and retrying it goes on.
    await alice.accepted(await alice.retry(room, first["reply_id"]))
    await alice.accepted(await alice.edit(room, first["message_id"], "first, edited"))
    script.gate.set()
    final = await alice.finish(receipt)
    assert final["status"] == "completed"
    await alice.accepted(await alice.edit(room, receipt["message_id"], "second, edited"))


async def test_retries_of_an_older_reply_are_its_versions(alice, room):
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    versions = [first["reply_id"]]
    for _ in range(2):
        retry = await alice.accepted(await alice.retry(room, versions[-1]))
        assert retry["message_id"] == first["message_id"]
        assert retry["reply"]["parent_id"] == first["message_id"]
        assert retry["final"]["content"] == demo_text("first question", [])
        versions.append(retry["reply_id"])
        assert retry["final"]["sibling_ids"] == versions
        assert (await alice.tree(room))["active_leaf_id"] == retry["reply_id"]
    # By the user message's id too.
    again = await alice.accepted(await alice.retry(room, first["message_id"]))
    versions.append(again["reply_id"])
    tree = by_id(await alice.tree(room))
    assert all(tree[v]["sibling_ids"] == versions for v in versions)
    assert ids((await alice.detail(room))["messages"]) == [first["message_id"], versions[-1]]
    # The first version still leads to the second question.
    switched = await alice.activate(room, first["reply_id"])
    assert switched.status_code == 200, switched.text
    assert ids(switched.json()["messages"]) == [
        first["message_id"],
        first["reply_id"],
        second["message_id"],
        second["reply_id"],
    ]


async def test_switching_follows_the_newest_child_down_to_a_leaf(alice, room):
    u1 = await alice.exchange(room, "one")
    u2 = await alice.exchange(room, "two")
    u3 = await alice.exchange(room, "three", u2["reply_id"])
    u2b = await alice.accepted(await alice.edit(room, u2["message_id"], "two, edited"))
    path = {
        u1["message_id"]: [u1, u2b],  # u1 -> r1 -> newest of (u2, u2b) -> its reply
        u2["message_id"]: [u1, u2, u3],  # u2 -> r2 -> u3 -> r3
        u2["reply_id"]: [u1, u2, u3],
        u3["reply_id"]: [u1, u2, u3],
        u2b["message_id"]: [u1, u2b],
    }
    for leaf_id, exchanges in path.items():
        expected = [i for e in exchanges for i in (e["message_id"], e["reply_id"])]
        response = await alice.activate(room, leaf_id)
        assert response.status_code == 200, response.text
        switched = response.json()
        assert switched["active_leaf_id"] == expected[-1]
        assert ids(switched["messages"]) == expected
        detail = await alice.detail(room)
        assert detail["active_leaf_id"] == expected[-1]
        assert detail["messages"] == switched["messages"]
        assert ids(await alice.history(room, 2)) == expected
    # A send goes on from where the switch left the active leaf.
    await alice.activate(room, u2["message_id"])
    four = await alice.exchange(room, "four")
    assert four["user_message"]["parent_id"] == u3["reply_id"]


async def test_switching_to_a_message_not_in_the_room_is_404(alice, bob, room):
    first = await alice.exchange(room, "first question")
    elsewhere = await alice.exchange(await alice.room("other"), "elsewhere")
    for leaf_id in (elsewhere["reply_id"], 999_999):
        response = await alice.activate(room, leaf_id)
        assert response.status_code == 404
        assert response.json()["code"] == "message_not_found"
    assert (await bob.activate(room, first["reply_id"])).status_code == 404
    assert (await alice.tree(room))["active_leaf_id"] == first["reply_id"]


async def test_the_tree_of_an_empty_room_and_of_someone_else_s(alice, bob, room):
    assert await alice.tree(room) == {"messages": [], "active_leaf_id": None}
    assert (await alice.detail(room))["active_leaf_id"] is None
    response = await bob.client.get(f"/chatroom/{room}/tree", headers=bob.auth)
    assert response.status_code == 404
    assert response.json()["code"] == "chatroom_not_found"


async def test_a_branch_switch_while_a_reply_is_produced_stays(script, alice, room):
    # The reply goes on in its branch; finishing it does not move the active leaf.
    first = await alice.exchange(room, "first question")
    version = await alice.accepted(await alice.retry(room, first["reply_id"]))
    await alice.activate(room, first["reply_id"])
    held = (await alice.send(room, f"{HOLD} second question")).json()
    assert held["user_message"]["parent_id"] == first["reply_id"]
    await asyncio.wait_for(script.holding.wait(), 10)
    switched = await alice.activate(room, version["reply_id"])
    assert switched.json()["active_leaf_id"] == version["reply_id"]
    script.gate.set()
    final = await alice.finish(held)
    assert final["status"] == "completed"
    context = [first["message_id"], first["reply_id"]]
    assert final["content"] == demo_text(f"{HOLD} second question", context)
    detail = await alice.detail(room)
    assert detail["active_leaf_id"] == version["reply_id"]
    assert ids(detail["messages"]) == [first["message_id"], version["reply_id"]]


async def test_a_room_with_branches_deleted_mid_reply_gets_nothing_after(app, script, alice, room):
    first = await alice.exchange(room, "first question")
    await alice.accepted(await alice.edit(room, first["message_id"], "first, edited"))
    held = (await alice.send(room, f"{HOLD} second question", first["reply_id"])).json()
    await asyncio.wait_for(script.holding.wait(), 10)
    # The reply stops at its first chunk after the delete; nothing of the room is written.
    assert (await alice.client.delete(f"/chatroom/{room}", headers=alice.auth)).status_code == 204
    script.gate.set()
    await asyncio.wait_for(script.released.wait(), 10)
    response = await alice.client.get(f"/chatroom/{room}/tree", headers=alice.auth)
    assert response.status_code == 404
    async with app.state.services.database.sessionmaker() as session:
        count = select(func.count()).select_from(Message).where(Message.chatroom_id == room)
        assert (await session.execute(count)).scalar_one() == 0
    stream = await alice.client.get(held["stream_url"], headers=alice.auth)
    assert stream.status_code == 404


async def test_a_room_shows_the_latest_50_of_its_active_branch(alice, room):
    exchanges = [await alice.exchange(room, f"question {n}") for n in range(26)]
    version = await alice.accepted(await alice.retry(room, exchanges[-1]["reply_id"]))
    branch = [i for e in exchanges for i in (e["message_id"], e["reply_id"])]
    branch[-1] = version["reply_id"]  # the older version is not on the branch
    detail = await alice.detail(room)
    assert ids(detail["messages"]) == branch[-50:]
    assert detail["message_count"] == 53
    assert ids(await alice.history(room, 200)) == branch


async def test_a_fork_copies_the_path_into_a_new_room(alice, room_with_prompt):
    room = room_with_prompt
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    await alice.exchange(room, "third question")
    await alice.accepted(await alice.edit(room, second["message_id"], "2nd, edited"))
    source = await alice.tree(room)
    used = await alice.used_today()
    response = await alice.fork(room, second["reply_id"])
    assert response.status_code == 201, response.text
    fork = response.json()
    assert fork["id"] != room
    assert fork["name"] == "tree (fork)"
    assert fork["system_prompt"] == "Answer in one line."
    originals = [source_message(source, i) for i in path_ids(first, second)]
    copies = fork["messages"]
    assert len(copies) == len(originals) == 4
    assert not set(ids(copies)) & set(ids(source["messages"]))
    copied = ("role", "content", "status", "usage", "model", "parts")
    for original, copy, parent in zip(originals, copies, [None, *copies], strict=False):
        assert {k: copy[k] for k in copied} == {k: original[k] for k in copied}
        assert copy["chatroom_id"] == fork["id"]
        assert copy["parent_id"] == (parent["id"] if parent else None)
        assert copy["sibling_ids"] == [copy["id"]]
        if copy["role"] == "assistant":
            assert copy["reply_to"] == parent["id"]
    assert fork["active_leaf_id"] == copies[-1]["id"]
    assert await alice.tree(fork["id"]) == {
        "messages": copies,
        "active_leaf_id": copies[-1]["id"],
    }
    assert await alice.tree(room) == source
    assert await alice.used_today() == used  # a fork calls no model
    listed = await alice.client.get("/chatroom", headers=alice.auth)
    assert fork["id"] in [r["id"] for r in listed.json()["chatrooms"]]
    # The fork goes on from its copy of the reply, and its model sees the copies.
    more = await alice.exchange(fork["id"], "third, in the fork")
    assert more["user_message"]["parent_id"] == copies[-1]["id"]
    assert more["final"]["content"] == demo_text("third, in the fork", ids(copies))


async def test_a_fork_at_a_user_message_ends_with_it(alice, room):
    first = await alice.exchange(room, "first question")
    second = await alice.exchange(room, "second question")
    response = await alice.fork(room, second["message_id"])
    assert response.status_code == 201, response.text
    fork = response.json()
    assert [m["content"] for m in fork["messages"]] == [
        "first question",
        first["final"]["content"],
        "second question",
    ]
    assert fork["active_leaf_id"] == fork["messages"][-1]["id"]


async def test_a_fork_name_fits_the_room_name_limit(alice):
    room = await alice.room("x" * 200)
    await alice.exchange(room, "first question")
    first_id = (await alice.tree(room))["messages"][0]["id"]
    response = await alice.fork(room, first_id)
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    assert len(name) == 200
    assert name.startswith("x" * 190)


async def test_fork_refusals(script, alice, bob, room):
    first = await alice.exchange(room, "first question")
    elsewhere = await alice.exchange(await alice.room("other"), "elsewhere")
    for message_id in (elsewhere["reply_id"], 999_999):
        response = await alice.fork(room, message_id)
        assert response.status_code == 404
        assert response.json()["code"] == "message_not_found"
    assert (await bob.fork(room, first["reply_id"])).status_code == 404
    held = (await alice.send(room, f"{HOLD} second question")).json()
    await asyncio.wait_for(script.holding.wait(), 10)
    response = await alice.fork(room, held["reply_id"])
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "reply_in_progress"
    # The path to the user message has nothing in progress.
    assert (await alice.fork(room, held["message_id"])).status_code == 201
    script.gate.set()
    await alice.finish(held)
    assert (await alice.fork(room, held["reply_id"])).status_code == 201


@pytest.mark.parametrize("settings_overrides", [{**LIFTED, "max_chatrooms_per_user": 1}])
async def test_a_fork_counts_against_the_room_limit(alice, room):
    first = await alice.exchange(room, "first question")
    response = await alice.fork(room, first["reply_id"])
    assert response.status_code == 409
    assert response.json()["code"] == "chatroom_limit_reached"


async def test_pages_of_messages_walk_the_active_branch(alice, room):
    exchanges = [await alice.exchange(room, f"question {n}") for n in range(1, 5)]
    u3b = await alice.accepted(await alice.edit(room, exchanges[2]["message_id"], "3, edited"))
    branch = [i for e in [*exchanges[:2], u3b] for i in (e["message_id"], e["reply_id"])]
    url = f"/chatroom/{room}/messages"
    newest = (await alice.client.get(url, params={"limit": 4}, headers=alice.auth)).json()
    assert ids(newest["messages"]) == branch[2:]
    assert newest["next_cursor"] == str(branch[2])
    older = await alice.client.get(
        url, params={"limit": 4, "before": newest["next_cursor"]}, headers=alice.auth
    )
    assert (ids(older.json()["messages"]), older.json()["next_cursor"]) == (branch[:2], None)
    whole = (await alice.client.get(url, headers=alice.auth)).json()
    assert (ids(whole["messages"]), whole["next_cursor"]) == (branch, None)
    assert ids(await alice.history(room, 1)) == branch
    # `before` in another branch: the page is that message's ancestors.
    old_leaf = exchanges[3]["reply_id"]
    page = await alice.client.get(url, params={"limit": 3, "before": old_leaf}, headers=alice.auth)
    assert page.status_code == 200, page.text
    u3, r3, u4 = (exchanges[2]["message_id"], exchanges[2]["reply_id"], exchanges[3]["message_id"])
    assert (ids(page.json()["messages"]), page.json()["next_cursor"]) == ([u3, r3, u4], str(u3))


async def test_a_page_before_a_message_not_in_the_room_is_404(alice, room):
    await alice.exchange(room, "first question")
    elsewhere = await alice.exchange(await alice.room("other"), "elsewhere")
    for before in (elsewhere["reply_id"], 999_999):
        response = await alice.client.get(
            f"/chatroom/{room}/messages", params={"before": before}, headers=alice.auth
        )
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "message_not_found"


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 3}])
async def test_edits_and_retries_take_a_slot_a_failure_gives_back(script, alice, room):
    first = await alice.exchange(room, "first question")
    used = [("send", await alice.used_today())]
    failed = await alice.edit(room, first["message_id"], "fail, edited")
    assert (failed.status_code, failed.headers["X-RateLimit-Remaining"]) == (202, "1")
    assert failed.headers["X-RateLimit-Limit"] == "3"
    assert (await alice.finish(failed.json()))["status"] == "failed"
    used.append(("failed edit", await alice.used_today()))
    blocked = await alice.edit(room, first["message_id"], "block, edited")
    assert (blocked.status_code, blocked.headers["X-RateLimit-Remaining"]) == (202, "1")
    assert (await alice.finish(blocked.json()))["status"] == "blocked"
    used.append(("blocked edit", await alice.used_today()))
    failed_retry = await alice.accepted(await alice.retry(room, failed.json()["reply_id"]))
    assert failed_retry["final"]["status"] == "failed"
    used.append(("failed retry", await alice.used_today()))
    retry = await alice.retry(room, first["reply_id"])
    assert (retry.status_code, retry.headers["X-RateLimit-Remaining"]) == (202, "1")
    await alice.finish(retry.json())
    used.append(("retry", await alice.used_today()))
    edit = await alice.edit(room, first["message_id"], "first, edited")
    assert (edit.status_code, edit.headers["X-RateLimit-Remaining"]) == (202, "0")
    await alice.finish(edit.json())
    used.append(("edit", await alice.used_today()))
    assert used == [
        ("send", 1),
        ("failed edit", 1),
        ("blocked edit", 1),
        ("failed retry", 1),
        ("retry", 2),
        ("edit", 3),
    ]
    tree = await alice.tree(room)
    for response in (
        await alice.edit(room, first["message_id"], "one more"),
        await alice.retry(room, first["reply_id"]),
    ):
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "daily_limit_reached"
    assert await alice.tree(room) == tree
    assert await alice.used_today() == 3


async def test_two_sends_racing_without_a_parent_form_a_chain(alice, room):
    first = await alice.exchange(room, "first question")
    responses = await asyncio.gather(alice.send(room, "a"), alice.send(room, "b"))
    earlier, later = sorted((r.json() for r in responses), key=lambda r: r["message_id"])
    assert earlier["user_message"]["parent_id"] == first["reply_id"]
    assert later["user_message"]["parent_id"] == earlier["reply_id"]
    assert (await alice.tree(room))["active_leaf_id"] == later["reply_id"]
    for receipt in (earlier, later):
        await alice.finish(receipt)


async def test_two_sends_racing_on_one_parent_are_siblings(alice, room):
    first = await alice.exchange(room, "first question")
    parent = first["reply_id"]
    responses = await asyncio.gather(alice.send(room, "a", parent), alice.send(room, "b", parent))
    earlier, later = sorted((r.json() for r in responses), key=lambda r: r["message_id"])
    assert earlier["user_message"]["parent_id"] == later["user_message"]["parent_id"] == parent
    assert (await alice.tree(room))["active_leaf_id"] == later["reply_id"]
    for receipt in (earlier, later):
        final = await alice.finish(receipt)
        assert final["sibling_ids"] == [receipt["reply_id"]]
        prompt = receipt["user_message"]["content"]
        assert final["content"] == demo_text(prompt, [first["message_id"], parent])


async def test_two_edits_racing_on_one_message_are_both_kept(alice, room):
    first = await alice.exchange(room, "first question")
    target = first["message_id"]
    responses = await asyncio.gather(alice.edit(room, target, "a"), alice.edit(room, target, "b"))
    assert [r.status_code for r in responses] == [202, 202], [r.text for r in responses]
    earlier, later = sorted((r.json() for r in responses), key=lambda r: r["message_id"])
    siblings = [target, earlier["message_id"], later["message_id"]]
    assert (await alice.tree(room))["active_leaf_id"] == later["reply_id"]
    for receipt in (earlier, later):
        await alice.finish(receipt)
    tree = by_id(await alice.tree(room))
    assert all(tree[i]["sibling_ids"] == siblings for i in siblings)


async def test_two_retries_racing_on_an_older_message_queue_one_reply(script, alice, room):
    script.gate.set()
    first = await alice.exchange(room, f"{HOLD} first question")
    await alice.exchange(room, "second question")
    script.gate.clear()  # the new reply to the first question stays in progress
    responses = await asyncio.gather(
        alice.retry(room, first["reply_id"]),
        alice.retry(room, first["reply_id"]),
        alice.retry(room, first["message_id"]),
    )
    assert sorted(r.status_code for r in responses) == [202, 409, 409], [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"reply_in_progress"}
    (winner,) = (r.json() for r in responses if r.status_code == 202)
    assert winner["reply"]["parent_id"] == first["message_id"]
    assert await alice.used_today() == 3
    tree = await alice.tree(room)
    assert (len(tree["messages"]), tree["active_leaf_id"]) == (5, winner["reply_id"])
    script.gate.set()
    final = await alice.finish(winner)
    assert final["content"] == demo_text(f"{HOLD} first question", [])
    assert final["sibling_ids"] == [first["reply_id"], winner["reply_id"]]


@pytest.fixture
async def room_with_prompt(alice):
    return await alice.room("tree", system_prompt="Answer in one line.")


def path_ids(*exchanges):
    return [i for e in exchanges for i in (e["message_id"], e["reply_id"])]


def source_message(tree, message_id):
    return by_id(tree)[message_id]
