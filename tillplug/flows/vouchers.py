"""3.2 user-led and 3.3 cashier-led vouchers, and the three kinds of code of the seed."""

from __future__ import annotations

from typing import Any

from tillplug.barcodes.classify import ScanKind
from tillplug.engine.models import (
    Benefit,
)
from tillplug.errors import (
    BenefitNotFound,
    CheckoutConflict,
    InvalidRequest,
    VoucherError,
)
from tillplug.flows.base import FlowBase, benefit_view
from tillplug.flows.checkouts import (
    AppliedVoucher,
)
from tillplug.receipts import templates


class VoucherFlows(FlowBase):
    # -- 3.2 / 3.3 vouchers -----------------------------------------------------------

    async def apply_voucher(self, tx_id: str, code: str, check_only: bool | None = None) -> dict[str, Any]:
        code = code.strip()
        if not code or len(code) > 128:
            raise InvalidRequest("A voucher code is 1 to 128 characters.")
        checkout = self._open(tx_id)
        classified = self.classifier.classify(code)
        if classified.kind is ScanKind.LOCAL_POOL:
            # Codes the POS manages alone: never sent to the engine.
            result = {"transactionId": tx_id, "kind": "local_pool", "code": classified.code}
            self.events.publish("voucher_result", result, lane=checkout.lane)
            return result
        if classified.kind is ScanKind.VOUCHER:
            code = classified.code
        if any(v.code == code for v in checkout.vouchers):
            raise CheckoutConflict("This voucher is already applied to this sale.")
        if check_only is None:
            check_only = self.config.vouchers.mode == "check_then_burn"
        member_id = checkout.member.id if checkout.member else None
        try:
            benefit = await self.client.validate_voucher(code, check_only=check_only, user_identifier=member_id)
        except VoucherError as exc:
            self.events.publish(
                "voucher_result",
                {"transactionId": tx_id, "code": code, "ok": False, "error": exc.code, "message": exc.message},
                lane=checkout.lane,
            )
            raise
        return await self._applied(tx_id, benefit, burned=not check_only)

    async def _applied(self, tx_id: str, benefit: Benefit, *, burned: bool) -> dict[str, Any]:
        voucher = AppliedVoucher(
            code=benefit.code.value if benefit.code else "",
            benefit_id=benefit.id,
            name=benefit.reward.name if benefit.reward else "Voucher",
            discounts=[
                d.model_dump(exclude_none=True, by_alias=True)
                for d in (benefit.reward.discounts if benefit.reward else [])
            ],
            burned=burned,
        )
        async with self._lock(self._tx_locks, tx_id):
            checkout = self._checkout(tx_id)
            checkout.vouchers.append(voucher)
            with self.checkouts.transaction() as tx:
                self.checkouts.save(tx, checkout)
        result = {"transactionId": tx_id, "kind": "engine", "ok": True, **voucher.to_api()}
        self.events.publish("voucher_result", result, lane=checkout.lane)
        if self.config.receipts.voucher_receipt:
            result["print"] = await self._print(
                checkout.lane, templates.voucher_receipt(self.slip, benefit, burned=burned)
            )
        return result

    async def list_benefits(self, tx_id: str) -> list[dict[str, Any]]:
        member = self._member_of(self._checkout(tx_id))
        benefits = await self.client.list_benefits(member.id)
        return [benefit_view(b) for b in benefits if b.state() in ("created", "redeemed")]

    async def redeem_benefit(self, tx_id: str, benefit_id: str, check_only: bool | None = None) -> dict[str, Any]:
        checkout = self._open(tx_id)
        member = self._member_of(checkout)
        owned = {b.id: b for b in await self.client.list_benefits(member.id)}
        benefit = owned.get(benefit_id)
        if benefit is None:
            raise BenefitNotFound("This voucher is not in the member's wallet.")
        if benefit.state() == "created":
            benefit = await self.client.redeem_benefit(benefit_id)
        if benefit.code is None:
            raise InvalidRequest("This voucher has no code to validate.")
        if check_only is None:
            check_only = self.config.vouchers.mode == "check_then_burn"
        validated = await self.client.validate_voucher(
            benefit.code.value, check_only=check_only, user_identifier=member.id
        )
        return await self._applied(tx_id, validated, burned=not check_only)
