"""Accelerometer collectors: Android game-rate listener, plyer polling, and the factory.

plyer's accelerometer is polled and delivers ~5 Hz on Android, far too slow for gait (the
gait features need >= 20 Hz). On Android we therefore register our own
`SensorEventListener` with `SensorManager.SENSOR_DELAY_GAME` (~50 Hz) through pyjnius and
take the hardware timestamps, mapped onto the app's clock (see `AndroidAccelerometer`). plyer stays
as a fallback where the listener cannot be made.
On Linux plyer raises a plain `Exception`; desktops use `replay.ReplaySource` instead.
None of the Android code can run on this machine: it is guarded by `is_android()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mobile_client.clock import Clock, monotonic
from mobile_client.collectors import Sink
from mobile_client.platform_info import is_android
from modalities.events import AccelSample, EventValidationError

log = logging.getLogger(__name__)

SENSOR_DELAY_GAME = 1  # android.hardware.SensorManager.SENSOR_DELAY_GAME
TYPE_ACCELEROMETER = 1  # android.hardware.Sensor.TYPE_ACCELEROMETER
#: a gap longer than this between two sensor timestamps starts a new burst, re-anchored on the app
#: clock (the listener was registered again, or the phone slept while the sensor's clock counted on)
BURST_GAP_S = 1.0


class SensorUnavailable(RuntimeError):
    """No accelerometer can be read on this platform."""


class AndroidAccelerometer:
    """pyjnius `SensorEventListener` registered at game rate; pushes samples from the sensor thread.

    Samples are stamped on the app's clock (`clock`, what the evidence buffer measures "the last
    15 s" on and what the keyboard and touch collectors stamp with), not with
    `SensorEvent.timestamp` as it is. On Android that clock is `mobile_client.clock.monotonic`,
    CLOCK_BOOTTIME, the sensor's own clock, so the mapping below only adds the delivery delay; it
    is kept so that any clock the app is given (a `VirtualClock`, CLOCK_MONOTONIC where there is no
    CLOCK_BOOTTIME, which stops during suspend while the sensor's clock does not) gets the samples
    in its own seconds, never in another clock's. Each burst of samples (no gap over `BURST_GAP_S` between sensor
    timestamps) is anchored on the app clock at the arrival of its first sample, and keeps the
    sensor's spacing within it (what the gait features read the sampling rate from). Stamps never
    go back: a burst is anchored no earlier than just after the last stamp given, and the anchor
    is not moved within a burst (a first sample delivered late leaves the burst that much later,
    at most the delivery delay, rather than out of order).
    """

    modality = "gait"
    #: class defaults, so that `_push` also works on an instance made without `__init__` (tests)
    _clock: Clock = staticmethod(monotonic)
    _offset: float | None = None  # app clock - sensor clock, for the current burst
    _last_sensor_t: float | None = None
    _last_stamp: float | None = None

    def __init__(self, clock: Clock = monotonic) -> None:
        if not is_android():
            raise SensorUnavailable("the SensorManager listener needs Android")
        self._sink: Sink | None = None
        self._listener: Any = None
        self._manager: Any = None
        self._lock = threading.Lock()
        self._clock = clock
        self._offset = None
        self._last_sensor_t = None

    @property
    def running(self) -> bool:
        return self._sink is not None

    def start(self, sink: Sink) -> None:  # pragma: no cover - Android only
        if self._sink is not None:
            return
        from jnius import PythonJavaClass, autoclass, java_method

        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        Context = autoclass("android.content.Context")
        manager = activity.getSystemService(Context.SENSOR_SERVICE)
        sensor = manager.getDefaultSensor(TYPE_ACCELEROMETER)
        if sensor is None:
            raise SensorUnavailable("this phone reports no accelerometer")
        outer = self

        class _Listener(PythonJavaClass):  # type: ignore[misc]
            __javainterfaces__ = ["android/hardware/SensorEventListener"]
            __javacontext__ = "app"

            @java_method("(Landroid/hardware/SensorEvent;)V")
            def onSensorChanged(self, event: Any) -> None:
                # event.timestamp is nanoseconds on CLOCK_BOOTTIME (counts deep sleep): `_push` maps it
                outer._push(event.timestamp * 1e-9, event.values[0], event.values[1], event.values[2])

            @java_method("(Landroid/hardware/Sensor;I)V")
            def onAccuracyChanged(self, sensor: Any, accuracy: int) -> None:
                pass

        self._sink = sink
        self._listener = _Listener()
        self._manager = manager
        manager.registerListener(self._listener, sensor, SENSOR_DELAY_GAME)

    def _app_time(self, t_sensor: float) -> float:
        """`t_sensor` (seconds on the sensor's clock) on the app's clock; called as the sample arrives."""
        now = self._clock()
        offset = now - t_sensor  # the clocks' offset plus this sample's delivery delay
        last = self._last_sensor_t
        if self._offset is None or last is None or not t_sensor >= last or t_sensor - last > BURST_GAP_S:
            # a new burst: anchored at this sample's arrival, but never before the last stamp given
            if self._last_stamp is not None:
                offset = max(offset, self._last_stamp + 1e-3 - t_sensor)
            self._offset = offset
        self._last_sensor_t = t_sensor
        self._last_stamp = t_sensor + self._offset
        return self._last_stamp

    def _push(self, t: float, x: float, y: float, z: float) -> None:
        """One sample as the listener read it: `t` in seconds on the sensor's clock (`SensorEvent.timestamp`)."""
        with self._lock:
            if self._sink is None:
                return
            try:
                self._sink(AccelSample(self._app_time(t), x, y, z))
            except EventValidationError:  # a NaN from a flaky driver: drop the sample, keep going
                log.debug("dropped invalid accelerometer sample")

    def stop(self) -> None:
        with self._lock:
            if self._manager is not None and self._listener is not None:  # pragma: no cover - Android only
                self._manager.unregisterListener(self._listener)
            self._sink = None
            self._listener = None
            self._manager = None
            self._offset = None
            self._last_sensor_t = None
            self._last_stamp = None


class PlyerAccelerometer:
    """plyer's polled accelerometer (fallback: ~5 Hz on Android, enough for 'is moving', not gait)."""

    modality = "gait"

    def __init__(self, schedule: Callable[[Callable[[float], None], float], Any] | None = None,
                 clock: Clock = monotonic, rate_hz: float = 50.0) -> None:
        from plyer import accelerometer

        self._acc = accelerometer
        self._schedule = schedule
        self._clock = clock
        self._rate = rate_hz
        self._event: Any = None
        self._sink: Sink | None = None

    @property
    def running(self) -> bool:
        return self._sink is not None

    def start(self, sink: Sink) -> None:
        if self._sink is not None:
            return
        try:
            self._acc.enable()
        except Exception as exc:  # plyer raises a bare Exception where it has no backend
            raise SensorUnavailable(f"plyer accelerometer: {exc}") from exc
        self._sink = sink
        if self._schedule is None:
            from kivy.clock import Clock as KivyClock

            self._event = KivyClock.schedule_interval(self._poll, 1.0 / self._rate)
        else:
            self._event = self._schedule(self._poll, 1.0 / self._rate)

    def _poll(self, _dt: float) -> None:
        v = self._acc.acceleration
        if self._sink is None or v is None or v[0] is None:
            return
        self._sink(AccelSample(self._clock(), *map(float, v[:3])))

    def stop(self) -> None:
        if self._sink is None:
            return
        if self._event is not None and hasattr(self._event, "cancel"):
            self._event.cancel()
        try:
            self._acc.disable()
        except Exception:  # noqa: BLE001 - plyer backends raise anything
            pass
        self._sink = None


def platform_accelerometer(clock: Clock = monotonic) -> AndroidAccelerometer | PlyerAccelerometer:
    """The best live accelerometer here, stamping on `clock`; `SensorUnavailable` where there is none (desktop)."""
    if is_android():
        try:
            return AndroidAccelerometer(clock)
        except Exception as exc:  # noqa: BLE001 - pyjnius errors are not typed
            log.warning("game-rate listener unavailable (%s); falling back to plyer (~5 Hz)", exc)
            return PlyerAccelerometer(clock=clock)
    raise SensorUnavailable("no live accelerometer on this desktop: use a replay source")
