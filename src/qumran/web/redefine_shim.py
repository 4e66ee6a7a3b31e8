"""TEMPORARY — drop this file when ``Manager.redefine`` lands (it is being added with
``PUT /v1/vms/{name}/definition``); pages.py then calls the Manager's own method.

A minimal stand-in with the same signature and errors, so the Edit page works and is
tested meanwhile: the new document is validated and checked as ``define`` does (as the
caller, with their rights), must keep the VM's name, and replaces the definition of a
VM that is shut off; the VM keeps its uuid, owner and autostart.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from qumran.config.validate import validate_spec
from qumran.daemon.domain import Domain, Event, Reason
from qumran.daemon.manager import Caller, Manager
from qumran.drivers.base import Owner
from qumran.drivers.checks import check_memory
from qumran.errors import InvalidArgument, InvalidState


async def redefine(manager: Manager, caller: Caller, name: str, doc: Any) -> Domain:
    async with manager._locked(caller, name) as dom:
        if dom.active:
            raise InvalidState(
                f"VM {name!r} is {dom.state.value}; shut it down to change its definition"
            )
        spec = validate_spec(doc)
        if spec.name != name:
            raise InvalidArgument(
                f"name: {spec.name!r} is not this VM's name ({name!r}); renaming is not supported"
            )
        check_memory(spec)
        driver = manager.drivers.get(spec.hypervisor)
        if driver is None:
            raise InvalidArgument(f"hypervisor: {spec.hypervisor!r} is not available here")
        driver.check(spec, Owner(dom.record.owner, dom.record.owner_gid))
        definition = spec.model_dump(mode="json")
        with manager.store._tx() as db:
            db.execute(
                "UPDATE vms SET definition = ? WHERE uuid = ?", (json.dumps(definition), dom.uuid)
            )
        dom.record = dataclasses.replace(dom.record, definition=definition)
        dom.spec = spec
        manager._changed(dom, Event.DEFINED, Reason.DEFINED, "definition replaced")
        return dom
