"""Shared fixtures: a platform with a host client, and launched sample VMs."""

from __future__ import annotations

import random

import pytest

from tvmm.abi.types import Level
from tvmm.host.devices import Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.samples import SAMPLES, build_sample


@pytest.fixture(scope="session")
def images():
    return {name: build_sample(name) for name in SAMPLES}


class Launched:
    """A launched sample VM: the machine (inside access for asserts) and its host."""

    def __init__(self, images, guest: str, level: Level, *, seed: int = 0, inputs=(),
                 policy_config=None, quantum: int = 0, host_cls=HonestHypervisor):
        self.secret = SAMPLES[guest].make_secret(random.Random(seed))
        self.machine = make_machine(seed=seed, image=images[guest], level=level,
                                    policy_config=policy_config)
        self.devices = Devices(Console(), input=InputDevice(inputs))
        self.host = host_cls(self.machine.client, self.devices, quantum=quantum)
        self.digest = self.host.launch(images[guest], level, DEFAULT_MEMORY,
                                       secret_blob=wrap_secret(self.machine, self.secret,
                                                               images[guest], level))
        self.client = self.machine.client
        self.vm_id = self.host.vm

    @property
    def vm(self):
        return self.machine.platform.vm(self.vm_id)


@pytest.fixture
def launch(images):
    def make(guest: str, level: Level | str, **kw) -> Launched:
        return Launched(images, guest, Level(level), **kw)

    return make
