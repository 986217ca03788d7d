"""An OTLP/HTTP trace receiver for tests: `python -m tests.harness.otlp_receiver --port N
--dir D`. POST /v1/traces takes an `ExportTraceServiceRequest` (protobuf, as the OpenTelemetry
exporters send it, gzip or not), decodes it with opentelemetry-proto and appends one JSON line
per span to D/spans.jsonl: ids in hex, parent, name, kind, service and attributes."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DIRECTORY = Path(".")
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "bool_value", "int_value",
                                             "double_value") else str(value)  # fmt: skip


async def traces(request: Request) -> Response:
    body = await request.body()
    if request.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    lines = []
    for resource_spans in export.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(json.dumps({
                    "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None, "name": span.name,
                    "kind": KINDS.get(span.kind, str(span.kind)),
                    "service": resource.get("service.name"),
                    "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                    "status": span.status.code,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                }))  # fmt: skip
    with (DIRECTORY / "spans.jsonl").open("a") as out:
        out.write("".join(line + "\n" for line in lines))
    answer = ExportTraceServiceResponse().SerializeToString()
    return Response(answer, media_type="application/x-protobuf")


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/_health", health)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    arguments = parser.parse_args()
    DIRECTORY = arguments.dir
    uvicorn.run(app, host="127.0.0.1", port=arguments.port, log_level="warning")
