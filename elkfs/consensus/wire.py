"""The HA protocol's messages on the wire: what masters send each other and what masters
and voters exchange, msgpack-encoded as a tagged union (the daemons carry the bytes in a
`Consensus` frame that also names the cluster)."""
from __future__ import annotations

import msgspec

from .messages import (Append, AppendReply, InstallSnapshot, PreVote, PreVoteReply, Release,
                       Renew, RenewReply, TimeoutNow, VoteReply, VoteRequest)

WireMsg = (PreVote | PreVoteReply | VoteRequest | VoteReply | Renew | RenewReply | Release
           | Append | InstallSnapshot | AppendReply | TimeoutNow)

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(WireMsg).decode
# a string that is not UTF-8 raises UnicodeDecodeError, not msgspec's error
DecodeError = (msgspec.DecodeError, UnicodeDecodeError)
