"""Medians and percentiles without numpy (the bench runs in the product's venv)."""


def percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values):
    return percentile(values, 50)


def p90(values):
    return percentile(values, 90)


def ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference
