"""Cadence companion app (Kivy): consent, enrolment, on-device features, transaction approval.

Layout (data flows one way: collectors -> evidence buffer -> features -> API):

* `collectors/`: keyboard, touch and accelerometer sources behind one interface that yield the
  plain event objects of `modalities.events`; a replay source plays recorded or synthetic
  signals through the same interface on desktop and in tests.
* `evidence`, `features`, `raw_store`, `device_key`, `api`: the on-device pipeline (no Kivy).
* `controllers/`: what each screen does, as plain Python that tests can call.
* `ui/`: the Kivy app, one `.kv` file per screen; screens only show controller results.
* `tour` and `flow`: headless entry points (screenshots, the scripted end-to-end flow).

Only `ui/`, `tour`, `flow` and the window-bound collectors import Kivy.
"""
