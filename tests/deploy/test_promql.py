from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from tests.deploy.promql import exported_sample_names, metric_names, registry_families


def test_metric_names_of_a_quantile_query():
    expr = "histogram_quantile(0.99, sum by (instance, le) (rate(adafocus_request_duration_seconds_bucket[5m]))) > 2"
    assert metric_names(expr) == {"adafocus_request_duration_seconds_bucket"}


def test_metric_names_skip_labels_strings_ranges_and_keywords():
    expr = (
        'sum by (status) (rate(adafocus_requests_total{status=~"5..", budget!="x y"}[$__rate_interval]))'
        " / ignoring(status) group_left sum(rate(adafocus_requests_total[5m] offset 1h)) > bool 0.05"
        " or up{job='adafocus'} == 0 and on(instance) adafocus_queue_depth > 0.8 * 256"
    )
    assert metric_names(expr) == {"adafocus_requests_total", "up", "adafocus_queue_depth"}


def test_metric_names_of_a_ratio_of_histogram_sums():
    expr = "sum by (stage) (rate(adafocus_batch_size_sum[1m])) / sum by (stage) (rate(adafocus_batch_size_count[1m]))"
    assert metric_names(expr) == {"adafocus_batch_size_sum", "adafocus_batch_size_count"}


def test_exported_sample_names_follow_the_metric_type():
    registry = CollectorRegistry()
    Counter("demo_requests", "help", ["status"], registry=registry)
    Histogram("demo_seconds", "help", registry=registry)
    Gauge("demo_depth", "help", registry=registry)
    Info("demo_build", "help", registry=registry)
    assert exported_sample_names(registry_families(registry)) == {
        "demo_requests_total",
        "demo_requests_created",
        "demo_seconds_bucket",
        "demo_seconds_sum",
        "demo_seconds_count",
        "demo_seconds_created",
        "demo_depth",
        "demo_build_info",
    }
