"""The site calibration report: PNG plots and a Markdown page a clinician can read.

Reports what Van Calster et al. (BMC Medicine 17:230, 2019) ask of an external
validation — the calibration curve, intercept and slope — next to
discrimination (AUROC) and the operating point at the threshold (sensitivity,
specificity, PPV, alerts per patient-day), before and after recalibration, on
patients the calibration never saw (TRIPOD+AI items 12e, 12f, 15).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vigil.calibration.metrics import reliability_curve
from vigil.calibration.record import ModelRef
from vigil.calibration.site import TIE_TOLERANCE, SiteCalibration, tie_warning

__all__ = ["RELIABILITY_PNG", "REPORT_MD", "SCORES_PNG", "write_report"]

RELIABILITY_PNG = "reliability.png"
SCORES_PNG = "score_histograms.png"
REPORT_MD = "report.md"

_CAL_ROWS = (
    ("Mean predicted risk (per hour)", "mean_probability", "{:.4f}"),
    ("Observed rate (per hour)", "prevalence", "{:.4f}"),
    ("Observed / expected", "observed_expected", "{:.2f}"),
    ("Calibration intercept (ideal 0)", "intercept", "{:.3f}"),
    ("Calibration slope (ideal 1)", "slope", "{:.3f}"),
    ("ECE, 10 equal-width bins", "ece", "{:.4f}"),
    ("ECE, 10 equal-mass bins", "ece_quantile", "{:.4f}"),
    ("Brier score", "brier", "{:.5f}"),
    ("Scaled Brier (higher is better)", "scaled_brier", "{:.4f}"),
    ("AUROC", "auroc", "{:.3f}"),
    ("AUPRC", "auprc", "{:.3f}"),
)
_OP_ROWS = (
    ("Sensitivity (hours)", "sensitivity", "{:.3f}"),
    ("Specificity (hours)", "specificity", "{:.3f}"),
    ("False-positive rate (hours)", "false_positive_rate", "{:.3f}"),
    ("PPV (hours)", "ppv", "{:.3f}"),
    ("Septic patients detected by onset", "patient_sensitivity", "{:.3f}"),
    ("Patients with at least one alert", "patients_alerted", "{:.3f}"),
    ("Alerts per patient-day", "alerts_per_patient_day", "{:.3f}"),
    ("Normalized utility (PhysioNet 2019)", "utility", "{:.3f}"),
)


def _plot_reliability(result: SiteCalibration, path: Path) -> None:
    from matplotlib.figure import Figure

    y = result.report.labels
    curves = [(label, reliability_curve(y, prob, n_bins=10, strategy="quantile"), style)
              for label, prob, style in (("before (raw model)", result.report.probability, "o--"),
                                         ("after recalibration", result.report_calibrated, "s-"))]
    after = curves[1][1]
    full = max(max(float(c.predicted.max()), float(c.observed.max())) for _, c, _ in curves)
    zoom = max(float(after.predicted.max()), float(after.observed.max()))
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    for i, (top, title) in enumerate(((full, "all predicted risks"),
                                      (zoom, "range of the recalibrated risks"))):
        top = min(1.0, 1.1 * top) if top > 0 else 1.0
        ax = fig.add_subplot(1, 2, i + 1)
        for label, curve, style in curves:
            ax.plot(curve.predicted, curve.observed, style, label=label)
        ax.plot([0, top], [0, top], color="grey", lw=1, label="perfect calibration")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("predicted risk (mean per tenth of hours)")
        ax.set_ylabel("observed share of hours with SepsisLabel = 1")
        ax.set_title(f"Later patients: {title}")
        ax.legend(loc="upper left")
    fig.savefig(path, dpi=110)


def _plot_scores(result: SiteCalibration, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    y = result.report.labels > 0
    panels = (("before: raw model", result.report.probability, result.model_threshold),
              ("after recalibration", result.report_calibrated, result.threshold))
    for i, (title, prob, cut) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        hi = float(np.quantile(prob, 0.999)) if prob.size else 1.0
        bins = np.linspace(0.0, max(hi, cut) * 1.05 or 1.0, 50)
        for mask, name in ((~y, "SepsisLabel = 0"), (y, "SepsisLabel = 1")):
            if mask.any():
                ax.hist(np.minimum(prob[mask], bins[-1]), bins=bins, density=True, alpha=0.55,
                        label=name)
        ax.axvline(cut, color="black", lw=1.2, ls="--", label=f"threshold {cut:.3g}")
        ax.set_title(title)
        ax.set_xlabel("predicted risk")
        ax.set_ylabel("density of hours")
        ax.legend()
    fig.savefig(path, dpi=110)


def _fmt(template: str, value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else template.format(value)


def _markdown(result: SiteCalibration, *, site: str, model: ModelRef) -> str:
    cal, ops, pol = result.calibration, result.operating, result.policy
    after = ops["after"].metrics[pol.metric]
    fit, rep = result.data_window["fit"], result.data_window["report"]
    level = int(round(100 * ops["after"].level))
    target = "maximum" if pol.target is None else f"{pol.target:g}"
    lines = [
        f"# Calibration report: {model.name} {model.version} at site {site}",
        "",
        f"The shared model was recalibrated with the **{result.calibrator.method}** method and "
        f"its alert threshold chosen for **{pol}** on the site's earlier patients "
        f"({fit['patients']:,} patients, {fit['septic_patients']:,} septic). Everything below is "
        f"measured on **later patients the calibration never saw** ({rep['patients']:,} "
        f"patients, {rep['rows']:,} patient-hours, {rep['septic_patients']:,} septic).",
        "",
        f"**Result:** {pol.metric.replace('_', ' ')} {_fmt('{:.3f}', after.value)} "
        f"({level}% interval {_fmt('{:.3f}', after.low)}-{_fmt('{:.3f}', after.high)}, "
        f"bootstrap over patients) against a target of {target}, at a threshold of "
        f"{result.threshold:.4g} on the recalibrated risk (on the earlier patients it was "
        f"chosen on: {result.fit_achieved:.3f}).",
        "",
        *([f"**Warning:** {tie_warning(result)}.", ""]
          if result.overshoot > TIE_TOLERANCE else []),
        "## Calibration: does a predicted risk of 5 % mean 5 %?",
        "",
        "| | before (raw model) | after recalibration |",
        "|---|---:|---:|",
    ]
    for name, key, template in _CAL_ROWS:
        b, a = getattr(cal["before"], key), getattr(cal["after"], key)
        lines.append(f"| {name} | {_fmt(template, b)} | {_fmt(template, a)} |")
    lines += [
        "",
        f"![reliability]({RELIABILITY_PNG})",
        "",
        "Points on the grey diagonal mean the predicted risk matches what happened. Points "
        "below it mean the model over-estimates risk at this site; above it, under-estimates.",
        "",
        "## At the alert threshold",
        "",
        f"Before: the model's own threshold {result.model_threshold:.4g} on the raw risk. After: "
        f"{result.threshold:.4g} on the recalibrated risk. Alerts replay the runtime's alert "
        f"policy (re-alert suppression {result.alert_policy['suppression_hours']:g} h"
        + (f", hysteresis {result.alert_policy['hysteresis']:g}"
           if result.alert_policy.get("hysteresis") is not None else "")
        + f"). Brackets: {level}% bootstrap interval over patients.",
        "",
        "| | before | after |",
        "|---|---:|---:|",
    ]
    for name, key, template in _OP_ROWS:
        cells = []
        for when in ("before", "after"):
            e = ops[when].metrics[key]
            cells.append(f"{_fmt(template, e.value)} [{_fmt(template, e.low)}, "
                         f"{_fmt(template, e.high)}]")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    params = result.calibrator.to_dict()["state"]
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in params.items() if isinstance(v, float))
    lines += [
        "",
        f"![score histograms]({SCORES_PNG})",
        "",
        "## How this was done",
        "",
        f"- Model: {model}.",
        f"- Method: {result.calibrator.method}" + (f" ({shown})." if shown else
                                                   f" ({len(params.get('X_thresholds_', []))} "
                                                   "steps)."),
        f"- Threshold policy: `{pol}`, chosen on the earlier patients.",
        "- Earlier vs later: PhysioNet has no dates, so patients are ordered by their record "
        f"number within each hospital; the first {result.data_window['fit_fraction']:.0%} are "
        "earlier.",
        "- Hour-level metrics count patient-hours (SepsisLabel marks the 6 h before onset and "
        "after); a septic patient is detected if an hour up to onset is above the threshold.",
        "- Definitions: calibration intercept and slope as in Van Calster et al., BMC Medicine "
        "2019; ECE as in Naeini et al., AAAI 2015; utility as in Reyna et al., Crit Care Med 2020.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    result: SiteCalibration, out_dir: str | Path, *, site: str, model: ModelRef
) -> Path:
    """Write the plots and ``report.md``.

    Parameters
    ----------
    result : SiteCalibration
    out_dir : str or Path
        Created if missing.
    site : str
    model : ModelRef

    Returns
    -------
    Path
        The Markdown page.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _plot_reliability(result, root / RELIABILITY_PNG)
    _plot_scores(result, root / SCORES_PNG)
    page = root / REPORT_MD
    page.write_text(_markdown(result, site=site, model=model))
    return page
