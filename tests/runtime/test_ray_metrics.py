"""/cluster/metrics's merge of the replicas' Prometheus text (runtime/ray_serve.py): pure, no Ray."""

from m3edge.runtime.ray_serve import merge_metrics, parse_metrics

A = """# HELP m3edge_http_requests_total HTTP requests by path and status.
# TYPE m3edge_http_requests_total counter
m3edge_http_requests_total{path="/v1/generate",code="200"} 3
m3edge_batcher_compute_time_us_total 12345678
m3edge_memories 2
"""
B = """m3edge_http_requests_total{path="/v1/generate",code="200"} 4
m3edge_http_requests_total{path="/v1/step",code="422"} 1
m3edge_memories 5
m3edge_batcher_compute_time_us_total 0.5
"""


def test_samples_sum_over_replicas_and_keep_each_replicas_own():
    merged = merge_metrics({"0": A, "1": B}).splitlines()
    assert "m3edge_replicas 2" in merged
    assert 'm3edge_http_requests_total{path="/v1/generate",code="200"} 7' in merged
    assert 'm3edge_http_requests_total{path="/v1/step",code="422"} 1' in merged
    assert "m3edge_memories 7" in merged
    assert "m3edge_batcher_compute_time_us_total 12345678.5" in merged  # no rounding to 6 digits
    assert 'm3edge_http_requests_total{replica="1",path="/v1/generate",code="200"} 4' in merged
    assert 'm3edge_memories{replica="0"} 2' in merged


def test_parse_skips_comments_and_non_numbers():
    got = parse_metrics("# TYPE x counter\nx 1\ny{a=\"b\"} 2.5\nz NaNx\n")
    assert got == {"x": ("x", "", 1.0), 'y{a="b"}': ("y", '{a="b"}', 2.5)}
