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

Every request, metrics on or not, also gets one access-log line on the `serving.access` logger
(stderr), in the Common Log Format: `host - - [date] "request line" status bytes`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from serving.storage import read_text_file

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
access_log = logging.getLogger("serving.access")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
    """

    def __init__(
        self,
        loaded_versions: Callable[[], dict[str, int]],
        load_attempts: Callable[[], dict[tuple[str, str], int]],
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
