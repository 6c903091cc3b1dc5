"""Site calibration: recalibration maps, threshold policies, the alert policy, records, reports."""

from vigil.calibration._base import CalibrationWarning, Calibrator, MinimumSamples
from vigil.calibration._logistic import separated, separated_each
from vigil.calibration.alerts import DEFAULT_SUPPRESSION_HOURS, alert_events, alerts_per_patient_day
from vigil.calibration.isotonic import IsotonicCalibration
from vigil.calibration.methods import (
    DEFAULT_METHOD,
    Method,
    calibrator_from_dict,
    make_calibrator,
    parse_method,
)
from vigil.calibration.metrics import CalibrationMetrics, calibration_metrics
from vigil.calibration.operating import Estimate, OperatingPoint, operating_point
from vigil.calibration.parametric import BetaCalibration, InTheLarge, LogisticCalibration
from vigil.calibration.policies import PolicyKey, ThresholdPolicy, choose_threshold, parse_policy
from vigil.calibration.record import CalibrationRecord, ModelRef, load_record, write_record
from vigil.calibration.site import ScoredHours, SiteCalibration, calibrate_site

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_SUPPRESSION_HOURS",
    "BetaCalibration",
    "CalibrationMetrics",
    "CalibrationRecord",
    "CalibrationWarning",
    "Calibrator",
    "Estimate",
    "InTheLarge",
    "IsotonicCalibration",
    "LogisticCalibration",
    "Method",
    "MinimumSamples",
    "ModelRef",
    "OperatingPoint",
    "PolicyKey",
    "ScoredHours",
    "SiteCalibration",
    "ThresholdPolicy",
    "alert_events",
    "alerts_per_patient_day",
    "calibrate_site",
    "calibration_metrics",
    "calibrator_from_dict",
    "choose_threshold",
    "load_record",
    "make_calibrator",
    "operating_point",
    "parse_method",
    "parse_policy",
    "separated",
    "separated_each",
    "write_record",
]
