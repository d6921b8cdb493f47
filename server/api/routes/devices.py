"""/v1/devices: bind a device's Ed25519 key to a user (called by the bank backend after login)."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import BankKey, Uow
from server.api.routing import CadenceRoute
from server.schemas import DeviceOut, DeviceRegister
from server.services.devices import register_device

router = APIRouter(prefix="/v1/devices", tags=["devices"], route_class=CadenceRoute)


@router.post("", status_code=201, response_model=DeviceOut)
def register(body: DeviceRegister, uow: Uow, actor: BankKey) -> DeviceOut:
    with uow() as session:
        dev = register_device(session, body, actor=actor)
        return DeviceOut(device_id=dev.id, user_id=dev.user_id, platform=dev.platform, created_at=dev.created_at)
