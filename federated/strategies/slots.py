"""Slot assignment: give each device its own prototype index, without learning anything about it.

Wraps any strategy: the inner strategy builds the round's messages (one shared config), and
this wrapper gives each destination node a private copy of the config with ``slot`` added.
Slots are handed out in the order of the devices' opaque keys (`assign`, from the scaling
round; `federated.task.device_key`), so the same devices get the same prototypes in every
run whatever node ids Flower draws; devices without a key get the next free slot when first
sampled (in node-id order among that round's sampled devices). A device keeps its prototype across rounds. The slot is an
index, not data about the person.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated.strategies.delegating import Delegating


class SlotsFullError(RuntimeError):
    """More devices joined than the model has prototypes (raise num-slots)."""


def slot_order(keys: dict[int, str], num_slots: int) -> dict[int, int]:
    """Node id -> slot, in order of (key, node id); keyless nodes come last.

    Raises `SlotsFullError` when there are more nodes than slots.
    """
    if len(keys) > num_slots:
        raise SlotsFullError(f"num-slots: {num_slots} prototypes are all taken; raise num-slots")
    return {node: i for i, node in enumerate(sorted(keys, key=lambda n: (keys[n] == "", keys[n], n)))}


class SlotAssigner(Delegating):
    """Delegating strategy that adds a per-device ``slot`` to every train/evaluate config."""

    def __init__(self, strategy: Strategy, num_slots: int) -> None:
        super().__init__(strategy)
        self.num_slots = num_slots
        self.slots: dict[int, int] = {}

    def assign(self, keys: dict[int, str]) -> None:
        """Give slots to `keys`' nodes in order of (key, node id); keyless nodes come last."""
        for node in slot_order(keys, self.num_slots):  # in slot order
            self.slot_of(node)

    def slot_of(self, node_id: int) -> int:
        if node_id not in self.slots:
            if len(self.slots) >= self.num_slots:
                raise SlotsFullError(f"num-slots: {self.num_slots} prototypes are all taken; raise num-slots")
            self.slots[node_id] = len(self.slots)
        return self.slots[node_id]

    def _personalise(self, messages: Iterable[Message]) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            content = RecordDict()
            for key, rec in msg.content.items():
                if isinstance(rec, ConfigRecord):
                    rec = ConfigRecord({**dict(rec), "slot": self.slot_of(node)})
                content[key] = rec
            out.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        # devices without a slot yet take the next ones in node-id order, whatever order they were sampled in;
        # only the sampled ones (never a device that connected after the scaling round: `Quorum`)
        for node in sorted(m.metadata.dst_node_id for m in messages):
            self.slot_of(node)
        return self._personalise(messages)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # replies arrive in whatever order devices finish; summing them in slot order makes the
        # aggregate bit-for-bit reproducible
        return self.strategy.aggregate_train(server_round, sorted(replies, key=self._slot_of_reply))

    def _slot_of_reply(self, msg: Message) -> tuple[int, int]:
        node = msg.metadata.src_node_id
        return self.slots.get(node, self.num_slots), node

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._personalise(self.strategy.configure_evaluate(server_round, arrays, config, grid))
