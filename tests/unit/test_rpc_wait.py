"""`rpc.wait_reply`: a reply's timeout set on the reply's own future."""

import asyncio

import pytest

from elkfs.proto import rpc


async def test_a_reply_already_there_is_returned_without_waiting():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fut.set_result(("reply", None))
    steps = []
    loop.call_soon(steps.append, "loop ran")
    assert await rpc.wait_reply(fut, 1.0) == ("reply", None)
    assert steps == []  # no loop iteration (asyncio.wait_for would take one)


async def test_no_reply_in_time_fails_the_future_itself():
    fut = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await rpc.wait_reply(fut, 0.01)
    assert fut.done()  # a late reply finds it done and is dropped


async def test_a_reply_in_time_cancels_the_timer():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, ("late but in time", None))
    assert await rpc.wait_reply(fut, 0.05) == ("late but in time", None)
    await asyncio.sleep(0.1)  # the timer would fail a done future: nothing happens
