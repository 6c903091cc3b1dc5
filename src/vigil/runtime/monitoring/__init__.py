"""Drift and performance monitoring of the deployed model.

Pure statistics (:mod:`.stats`) and sequential detectors (:mod:`.detectors`)
beside the stateful parts: the reference (:mod:`.reference`), feed health
(:mod:`.feed`), performance once outcomes arrive (:mod:`.performance`) and
where outcomes come from in the service (:mod:`.outcomes`),
alarms and their storage (:mod:`.alarms`), the monitor the cycle calls
(:mod:`.monitor`) and the report (:mod:`.report`, imported on demand: it needs
matplotlib).
"""

from __future__ import annotations

from vigil.runtime.monitoring.alarms import (
    MONITOR_MIGRATION,
    Alarm,
    AlarmBook,
    AlarmCollector,
    AlarmKind,
    Finding,
    Severity,
    load_alarms,
    load_stats,
)
from vigil.runtime.monitoring.detectors import Adwin, AdwinChange, Cusum
from vigil.runtime.monitoring.feed import FeedHealth
from vigil.runtime.monitoring.monitor import Monitor
from vigil.runtime.monitoring.outcomes import OutcomeFeed
from vigil.runtime.monitoring.performance import FrameLabels, LabelSource, PerformanceMonitor
from vigil.runtime.monitoring.reference import Histogram, Reference

__all__ = [
    "MONITOR_MIGRATION",
    "Adwin",
    "AdwinChange",
    "Alarm",
    "AlarmBook",
    "AlarmCollector",
    "AlarmKind",
    "Cusum",
    "FeedHealth",
    "Finding",
    "FrameLabels",
    "Histogram",
    "LabelSource",
    "Monitor",
    "OutcomeFeed",
    "PerformanceMonitor",
    "Reference",
    "Severity",
    "load_alarms",
    "load_stats",
]
