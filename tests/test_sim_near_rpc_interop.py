"""The production NEAR client (near/rpc.py, sender.py, verifier.py) against the simulated node.

The wire-level checks live in test_sim_near_rpc.py (independent client); this file proves the code
that runs in production works against the simulator through a real socket.
"""

from __future__ import annotations

import pytest

from intents_mm.clock import ManualClock
from intents_mm.errors import ContractError
from intents_mm.near.encoding import b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.payload import build_intent_message, sign_nep413
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.sender import TransactionSender
from intents_mm.near.verifier import VerifierClient
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
MM = "solver.near"
MM_KEY = SigningKey.from_seed(b"\x01" * 32)


@pytest.mark.parametrize("shape", ["result_error", "rpc_error"])
async def test_production_client_views_and_transactions(shape: str) -> None:
    clock = ManualClock()
    verifier = Verifier(clock, fee_pips=100, salt=bytes.fromhex("252812b3"))
    chain = SimNear(clock, verifier, lagged_views=True)
    clock.advance(6 * 10**9)  # ten 600 ms blocks after genesis
    chain.add_account(MM, MM_KEY.public_key.to_string(), nonce=41)
    verifier.add_public_key(MM, MM_KEY.public_key.to_string())
    verifier.credit(MM, BTC, 5000)
    server = SimNearRpcServer(chain, contract_error_shape=shape)  # type: ignore[arg-type]
    url = await server.start()
    rpc = NearRpcClient([url], timeout_s=5.0)
    try:
        views = VerifierClient(rpc)
        balances, height = await views.mt_batch_balance_of(MM, [BTC])
        assert balances == {BTC: 0} and height == chain.height - 2  # `final` lags the credit
        clock.advance(1_200_000_000)  # two blocks later the credit is final
        balances, height = await views.mt_batch_balance_of(MM, [BTC])
        assert balances == {BTC: 5000} and height == chain.height - 2
        assert await views.has_public_key(MM, MM_KEY.public_key) is True
        assert await views.current_salt() == bytes.fromhex("252812b3")
        assert await views.fee() == 100

        sender = TransactionSender(rpc, MM, MM_KEY, clock=clock)
        nonce = b"\x61" * 32
        # a signed quote is cancelled by executing an empty-intents payload with its nonce
        cancel = sign_nep413(MM_KEY, build_intent_message(MM, clock.now_ns() + 60 * 10**9, []), nonce)
        args = {"signed": [cancel.to_json_obj()]}
        result = await sender.call("intents.near", "execute_intents", args, deposit=0)
        assert chain.tx_record(result.tx_hash) is not None
        assert await views.is_nonce_used(MM, nonce) is False  # not final yet
        clock.advance(1_200_000_000)
        assert await views.is_nonce_used(MM, nonce) is True
        assert (await rpc.view_access_key(MM, MM_KEY.public_key)).nonce == 42
        assert verifier.balances(MM) == {BTC: 5000}

        with pytest.raises(ContractError, match="nonce was already used"):
            await sender.call("intents.near", "execute_intents", args, deposit=0)
        # today's contract has no invalidate_nonces: the call fails as an unknown method
        with pytest.raises(ContractError, match="MethodNotFound"):
            await sender.call("intents.near", "invalidate_nonces", {"nonces": [b64encode(b"\x62" * 32)]})
        assert await views.is_nonce_used(MM, b"\x62" * 32) is False
        with pytest.raises(ContractError, match="Failed to deserialize"):
            await rpc.call_function("intents.near", "mt_balance_of", {"account_id": MM})
    finally:
        await rpc.close()
        await server.stop()
