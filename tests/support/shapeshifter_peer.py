"""shapeshifter-uftp 2.4.0 as a real DSO peer on loopback.

The library runs its FastAPI/uvicorn server in a thread and handles each message in a worker
thread after answering 200. This peer records everything it receives, answers requests the way
a DSO does, and orders offers whose first option reference starts with "order".

Its clients send with blocking `requests.post`; call them through `asyncio.to_thread` from async
tests, or the event loop serving our endpoint would be blocked by its own peer.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey
from shapeshifter_uftp import (
    AcceptedRejected,
    DPrognosisResponse,
    FlexOfferResponse,
    FlexOfferRevocationResponse,
    FlexOrder,
    FlexOrderISP,
    MeteringResponse,
    ShapeshifterDsoAgrClient,
    ShapeshifterDsoService,
)

from uftp import keys


class ShapeshifterDso(ShapeshifterDsoService):  # type: ignore[misc]
    def __init__(
        self,
        domain: str,
        key: SigningKey,
        *,
        port: int,
        peer_keys: dict[tuple[str, str], str],
        peer_endpoints: dict[tuple[str, str], str],
    ) -> None:
        self.received: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.all_received: list[tuple[str, Any]] = []
        super().__init__(
            sender_domain=domain,
            signing_key=keys.libsodium_secret_key_b64(key),
            key_lookup_function=lambda d, r: peer_keys.get((d, str(r))),
            endpoint_lookup_function=lambda d, r: peer_endpoints.get((d, str(r))),
            host="127.0.0.1",
            port=port,
        )

    def _record(self, kind: str, message: Any) -> None:
        self.all_received.append((kind, message))
        self.received.put((kind, message))

    def wait_for(
        self, kind: str, timeout_s: float = 15.0, where: Callable[[Any], bool] | None = None
    ) -> Any:
        """The next received message of this kind (others stay recorded in `all_received`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [k for k, _ in self.all_received]
                raise AssertionError(f"shapeshifter DSO received no {kind}; it saw {seen}")
            try:
                got_kind, message = self.received.get(timeout=remaining)
            except queue.Empty:
                continue
            if got_kind == kind and (where is None or where(message)):
                return message

    def client(self, agr_domain: str) -> ShapeshifterDsoAgrClient:
        return self.agr_client(agr_domain)

    # --- what a DSO does with what an AGR sends ---------------------------------------------------

    def process_d_prognosis(self, message: Any) -> None:
        self._record("DPrognosis", message)
        self.client(message.sender_domain).send_d_prognosis_response(
            DPrognosisResponse(
                conversation_id=message.conversation_id,
                d_prognosis_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )

    def process_flex_offer(self, message: Any) -> None:
        self._record("FlexOffer", message)
        client = self.client(message.sender_domain)
        client.send_flex_offer_response(
            FlexOfferResponse(
                conversation_id=message.conversation_id,
                flex_offer_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )
        option = message.offer_options[0]
        if option.option_reference.startswith("order"):
            client.send_flex_order(
                FlexOrder(
                    conversation_id=message.conversation_id,
                    flex_offer_message_id=message.message_id,
                    isp_duration=message.isp_duration,
                    time_zone=message.time_zone,
                    period=message.period,
                    congestion_point=message.congestion_point,
                    isps=[
                        FlexOrderISP(power=i.power, start=i.start, duration=i.duration)
                        for i in option.isps
                    ],
                    price=option.price,
                    currency=message.currency,
                    order_reference="ORD-1",
                    option_reference=option.option_reference,
                )
            )

    def process_flex_offer_revocation(self, message: Any) -> None:
        self._record("FlexOfferRevocation", message)
        self.client(message.sender_domain).send_flex_offer_revocation_response(
            FlexOfferRevocationResponse(
                conversation_id=message.conversation_id,
                flex_offer_revocation_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )

    def process_metering(self, message: Any) -> None:
        self._record("Metering", message)
        self.client(message.sender_domain).send_metering_response(
            MeteringResponse(
                conversation_id=message.conversation_id,
                metering_message_id=message.message_id,
                result=AcceptedRejected.ACCEPTED,
            )
        )

    def process_flex_request_response(self, message: Any) -> None:
        self._record("FlexRequestResponse", message)

    def process_flex_order_response(self, message: Any) -> None:
        self._record("FlexOrderResponse", message)

    def process_flex_reservation_update_response(self, message: Any) -> None:
        self._record("FlexReservationUpdateResponse", message)

    def process_flex_settlement_response(self, message: Any) -> None:
        self._record("FlexSettlementResponse", message)

    def process_dso_portfolio_query_response(self, message: Any) -> None:
        self._record("DSOPortfolioQueryResponse", message)

    def process_dso_portfolio_update_response(self, message: Any) -> None:
        self._record("DSOPortfolioUpdateResponse", message)

    def process_test_message(self, message: Any, sender_role: Any) -> None:
        self._record("TestMessage", message)
        super().process_test_message(message, sender_role)

    def process_test_message_response(self, message: Any) -> None:
        self._record("TestMessageResponse", message)
