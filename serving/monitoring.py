"""Prometheus metrics (TF Serving's --monitoring_config_file) and the per-request access log.

The config file is TF Serving's text-proto MonitoringConfig:

    prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }

With `enable: true` the REST port serves, at `path` (default /monitoring/prometheus/metrics),
the Prometheus text exposition of:

- `:tensorflow:serving:request_count` (counter, exposed with prometheus_client's `_total`
  suffix) by model_name, version, signature_name, API (predict, classify, regress,
  GetModelMetadata, GetModelStatus), entrypoint (REST or GRPC) and status (the canonical code);
- `:tensorflow:serving:request_latency_seconds` (histogram) by model_name, API and entrypoint;
- `:tensorflow:serving:loaded_versions` (gauge): versions AVAILABLE per model, read at scrape;
- `:tensorflow:cc:saved_model:load_attempt_count` (counter, `_total` suffix) by model_path (the
  version's directory) and status ("success" or "fail"), TensorFlow's own metric of SavedModel
  loads, which TF Serving exports: a fail count that grows means a pushed version does not load.

With prior streams on (`serving.prior_streams`, not TF Serving's), under `:lade:serving:`:
`prior_streams` (gauge by model_name: streams held), `prior_stream_updates_total` and
`prior_stream_images_total` (by model_name and version), `prior_stream_evictions_total` (by
reason: lru, reset, version_unloaded), `prior_stream_state_errors_total` (saved states that could
not be restored), `prior_stream_unsaved_updates` (gauge: updates not yet in a state file),
`prior_stream_tracking_seconds` (histogram of a request's tracker update), and, for the
--prior_stream_metrics_max_streams most updated streams only, `prior_stream_prior` (gauge by
model_name, version, stream and class: the tracked prior) and `prior_stream_stream_updates`: the
label values stay bounded by that number times the classes, however many streams there are.

Every request, metrics on or not, also gets one access-log line on the `serving.access` logger
(stderr), in the Common Log Format: `host - - [date] "request line" status bytes`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from serving.storage import read_text_file

if TYPE_CHECKING:
    from serving.prior_stream_registry import PriorStreamStats

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
access_log = logging.getLogger("serving.access")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TRACKING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_PRIOR_STREAM = ":lade:serving:prior_stream"


def _monitoring_config_class():
    """MonitoringConfig (tensorflow_serving/config/monitoring_config.proto), built at run time:
    tensorflow-serving-api does not ship it."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="lade_serving/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    field = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.MessageFactory(pool).GetPrototype(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


@dataclass(frozen=True)
class MonitoringOptions:
    """What a MonitoringConfig asks for (Prometheus off when `prometheus_path` is None)."""

    prometheus_path: str | None = None


def parse_monitoring_config(text: str) -> MonitoringOptions:
    """MonitoringOptions from the text of a TF Serving monitoring config file.

    Raises:
        ValueError: unparsable text or an unknown field, or a path that does not start with "/".
    """
    try:
        proto = text_format.Parse(text, _monitoring_config_class()())
    except text_format.ParseError as error:
        raise ValueError(f"monitoring config is not a text MonitoringConfig: {error}") from None
    prometheus = proto.prometheus_config
    if not prometheus.enable:
        return MonitoringOptions()
    path = prometheus.path or DEFAULT_METRICS_PATH
    if not path.startswith("/"):
        raise ValueError(f'prometheus_config path "{path}": expected a URL path starting with "/"')
    return MonitoringOptions(prometheus_path=path)


def read_monitoring_config_file(path: str) -> MonitoringOptions:
    """`parse_monitoring_config` of a file (local or a TensorFlow file system path).

    Raises:
        ValueError: the file cannot be read or is not a valid config.
    """
    return parse_monitoring_config(read_text_file(path))


class Metrics:
    """The Prometheus metrics of one server, in their own registry.

    Args:
        loaded_versions: called at scrape time; model name -> versions AVAILABLE.
        load_attempts: called at scrape time; (version path, "success" | "fail") -> loads.
        prior_stream_stats: called at scrape time when prior streams are on.
    """

    def __init__(
        self,
        loaded_versions: Callable[[], dict[str, int]],
        load_attempts: Callable[[], dict[tuple[str, str], int]],
        prior_stream_stats: Callable[[], PriorStreamStats] | None = None,
    ):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            ":tensorflow:serving:request_count",
            "Requests, by model, version, signature, API, entry point and status code.",
            ["model_name", "version", "signature_name", "API", "entrypoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            ":tensorflow:serving:request_latency_seconds",
            "Request latency in seconds, from request read to response written.",
            ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        class LoadedVersions:
            def collect(self):
                family = GaugeMetricFamily(
                    ":tensorflow:serving:loaded_versions",
                    "Versions loaded (AVAILABLE), per model.",
                    labels=["model_name"],
                )
                for name, count in sorted(loaded_versions().items()):
                    family.add_metric([name], count)
                yield family

        class LoadAttempts:
            def collect(self):
                family = CounterMetricFamily(
                    ":tensorflow:cc:saved_model:load_attempt_count",
                    "SavedModel loads, by version directory and status (success or fail).",
                    labels=["model_path", "status"],
                )
                for (path, status), count in sorted(load_attempts().items()):
                    family.add_metric([path, status], count)
                yield family

        self.registry.register(LoadedVersions())
        self.registry.register(LoadAttempts())
        self.prior_stream_tracking = None
        if prior_stream_stats is not None:
            self.registry.register(PriorStreamCollector(prior_stream_stats))
            self.prior_stream_tracking = Histogram(
                f"{_PRIOR_STREAM}_tracking_seconds",
                "Seconds of a prior stream request's tracker update (and immediate save).",
                buckets=_TRACKING_BUCKETS,
                registry=self.registry,
            )

    def observe_prior_stream_tracking(self, seconds: float) -> None:
        """Counts one prior stream update and its duration."""
        if self.prior_stream_tracking is not None:
            self.prior_stream_tracking.observe(seconds)

    def observe(self, record: RequestRecord) -> None:
        """Counts one finished request and its latency."""
        self.requests.labels(
            record.model or "",
            "" if record.version is None else str(record.version),
            record.signature or "",
            record.api,
            record.entrypoint,
            record.status,
        ).inc()
        self.latency.labels(record.model or "", record.api, record.entrypoint).observe(
            record.seconds()
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class PriorStreamCollector:
    """The prior stream metrics, read from `StreamRegistry.stats` at scrape time.

    Args:
        stats: returns the current figures.
    """

    def __init__(self, stats: Callable[[], PriorStreamStats]):
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats()
        streams = GaugeMetricFamily(
            ":lade:serving:prior_streams", "Prior streams held, per model.", labels=["model_name"]
        )
        for model, count in sorted(stats.streams.items()):
            streams.add_metric([model], count)
        yield streams
        for what, values in (("updates", stats.updates), ("images", stats.images)):
            family = CounterMetricFamily(
                f"{_PRIOR_STREAM}_{what}",
                f"Prior stream {what} (requests, or their images), per model version.",
                labels=["model_name", "version"],
            )
            for (model, version), count in sorted(values.items()):
                family.add_metric([model, str(version)], count)
            yield family
        evictions = CounterMetricFamily(
            f"{_PRIOR_STREAM}_evictions",
            "Prior streams evicted (lru) or reset, and versions' trackers dropped on unload.",
            labels=["reason"],
        )
        for reason in ("lru", "reset", "version_unloaded"):
            evictions.add_metric([reason], stats.evictions.get(reason, 0))
        yield evictions
        yield CounterMetricFamily(
            f"{_PRIOR_STREAM}_state_errors",
            "Saved prior stream states that could not be restored (the stream started fresh).",
            value=stats.state_errors,
        )
        yield GaugeMetricFamily(
            f"{_PRIOR_STREAM}_unsaved_updates",
            "Prior stream updates not yet written to the state directory.",
            value=stats.unsaved_updates,
        )
        prior = GaugeMetricFamily(
            f"{_PRIOR_STREAM}_prior",
            "Tracked prior per class of the most updated streams (--prior_stream_metrics_max_"
            "streams).",
            labels=["model_name", "version", "stream", "class"],
        )
        updates = GaugeMetricFamily(
            f"{_PRIOR_STREAM}_stream_updates",
            "Updates of the most updated streams, per model version.",
            labels=["model_name", "version", "stream"],
        )
        for model, version, name, count, values in stats.top:
            updates.add_metric([model, str(version), name], count)
            for index, value in enumerate(values):
                prior.add_metric([model, str(version), name, str(index)], value)
        yield prior
        yield updates


@dataclass
class RequestRecord:
    """What one request was, filled in by its front end as it learns it."""

    entrypoint: str  # "REST" | "GRPC"
    api: str
    peer: str
    request_line: str
    model: str | None = None
    version: int | None = None
    signature: str | None = None
    status: str = "OK"
    http_status: int = 200
    response_bytes: int = 0
    started: float = 0.0

    def __post_init__(self):
        self.started = self.started or time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def log_access(record: RequestRecord) -> None:
    """One Common Log Format line for `record` (gRPC calls: the HTTP status of their code)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    date = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    access_log.info(
        '%s - - [%s] "%s" %d %d',
        record.peer or "-",
        date,
        record.request_line,
        record.http_status,
        record.response_bytes,
    )
