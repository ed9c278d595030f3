"""What every benchmark script shares: percentiles computed one way.

The scripts run as `python3 bench/<name>.py`, so this directory is on
sys.path and `from benchlib import pct` finds this file.
"""


def pct(values, p):
    """The p-th percentile, interpolated between the nearest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
