"""The JSON API's OpenAPI 3.0 schema, written by hand (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from bgrunner.dashboard.forms import MAX_DELAY, MAX_PRIORITY
from bgrunner.logread import LEVELS
from bgrunner.model import STATUSES

MAX_LIMIT = 500
#: Ids above this are no job (the store's integer column is 64-bit).
MAX_ID = 2**63 - 1

_nullable_str = {"type": "string", "nullable": True}
_nullable_time = {"type": "string", "format": "date-time", "nullable": True}

JOB = {
    "type": "object",
    "description": "A job record, as `bgrunner status --json` prints it.",
    "required": ["id", "target", "method", "params", "status", "priority", "attempts",
                 "max_attempts", "run_at", "created_at"],
    "properties": {
        "id": {"type": "string", "example": "42"},
        "target": {"type": "string", "example": "examples.jobs:SampleJob"},
        "method": {"type": "string", "example": "process"},
        "params": {"oneOf": [{"type": "array", "items": {}}, {"type": "object"}]},
        "status": {"type": "string", "enum": list(STATUSES)},
        "priority": {"type": "integer"},
        "attempts": {"type": "integer"},
        "max_attempts": {"type": "integer"},
        "retry_delay": {"type": "number"},
        "timeout": {"type": "number"},
        "run_at": {"type": "string", "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": _nullable_time,
        "finished_at": _nullable_time,
        "pid": {"type": "integer", "nullable": True},
        "host": _nullable_str,
        "error": _nullable_str,
        "traceback": _nullable_str,
        "result": {"nullable": True},
        "progress": {"type": "object", "nullable": True},
        "then": {"type": "array", "items": {"type": "object"}},
        "parent_id": _nullable_str,
        "retry_of": _nullable_str,
        "queue": {"type": "string", "example": "default"},
        "unique_key": _nullable_str,
        "schedule": {**_nullable_str, "description": "The schedule that queued it."},
        "scheduled_for": {**_nullable_time, "description": "The occurrence it was fired for."},
    },
}

#: A queue name (CONTRACT §10), as ``bounds.check_queue`` accepts it.
QUEUE_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
#: A schedule name, as the allowlist accepts it.
SCHEDULE_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"

WORKER = {
    "type": "object",
    "description": "A live worker, as `bgrunner workers --json` prints it.",
    "required": ["id", "host", "pid", "queues", "concurrency", "running", "started_at",
                 "last_heartbeat", "seen_ago"],
    "properties": {
        "id": {"type": "string", "example": "web-1:4242"},
        "host": {"type": "string"},
        "pid": {"type": "integer"},
        "queues": {"type": "array", "items": {"type": "string"}, "nullable": True,
                   "description": "The queues it claims from; null: every queue."},
        "concurrency": {"type": "integer"},
        "running": {"type": "array", "items": {"type": "string"},
                    "description": "Ids of the jobs running under its claims."},
        "started_at": {"type": "string", "format": "date-time"},
        "last_heartbeat": {"type": "string", "format": "date-time"},
        "seen_ago": {"type": "number", "description": "Seconds since its last heartbeat (store clock)."},
    },
}

SCHEDULE = {
    "type": "object",
    "description": "A configured schedule, as `bgrunner schedules --json` prints it.",
    "required": ["name", "target", "method", "cron", "every", "timezone", "queue", "next_run",
                 "last_run", "paused", "enabled"],
    "properties": {
        "name": {"type": "string", "example": "nightly-report"},
        "target": {"type": "string"},
        "method": {"type": "string"},
        "cron": _nullable_str,
        "every": {"type": "number", "nullable": True, "description": "Seconds between runs."},
        "timezone": {"type": "string", "example": "UTC"},
        "when": {"type": "string", "example": "every 5 min"},
        "queue": {"type": "string"},
        "overlap": {"type": "string", "enum": ["skip", "allow"]},
        "priority": {"type": "integer"},
        "next_run": {**_nullable_time, "description": "null while paused or disabled."},
        "last_run": {
            "type": "object", "nullable": True, "required": ["job_id", "status"],
            "properties": {"job_id": {"type": "string"},
                           "status": {"type": "string", "enum": list(STATUSES), "nullable": True},
                           "scheduled_for": _nullable_time},
        },
        "paused": {"type": "boolean"},
        "enabled": {"type": "boolean"},
    },
}


LOG_LINE = {
    "type": "object",
    "description": "One line of the JSON log as written (CONTRACT §8 and §12): at least these keys,"
                   " and whatever else the event or the job's logger added.",
    "required": ["timestamp", "level", "event"],
    "additionalProperties": True,
    "properties": {
        "timestamp": {"type": "string", "format": "date-time"},
        "level": {"type": "string", "example": "info"},
        "event": {"type": "string", "example": "job_completed"},
        "job_id": {"type": "string", "nullable": True, "example": "42"},
        "target": _nullable_str,
        "method": _nullable_str,
        "attempt": {"type": "integer", "nullable": True},
        "pid": {"type": "integer", "nullable": True},
    },
}

_TIME_TEXT = {"type": "string", "maxLength": 64, "example": "10m",
              "description": "ISO 8601, or relative to now: 30s, 10m, 2h, 7d."}
LOG_PARAMETERS: list[dict[str, Any]] = [
    {"name": "since", "in": "query", "schema": _TIME_TEXT, "description": "Lines at or after this time."},
    {"name": "until", "in": "query", "schema": _TIME_TEXT, "description": "Lines at or before this time."},
    {"name": "level", "in": "query", "description": "At least this level.",
     "schema": {"type": "string", "enum": list(LEVELS)}},
    {"name": "event", "in": "query", "style": "form", "explode": True,
     "description": "Only these events (repeat the parameter, or separate names by commas).",
     "schema": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 100}}},
    {"name": "target", "in": "query", "schema": {"type": "string", "maxLength": 200}},
    {"name": "grep", "in": "query", "description": "A regular expression searched in the whole line.",
     "schema": {"type": "string", "maxLength": 200}},
    {"name": "job_id", "in": "query", "description": "Only this job's lines.",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
    {"name": "errors", "in": "query", "description": "Read the errors file instead of the main log.",
     "schema": {"type": "boolean", "default": False}},
    {"name": "before", "in": "query", "description": "The next_before of the previous page.",
     "schema": {"type": "string", "maxLength": 400}},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}},
]


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "The job's id.",
           "schema": {"type": "string", "example": "1"}}
_NAME = {"name": "name", "in": "path", "required": True, "description": "The schedule's name.",
         "schema": {"type": "string", "pattern": SCHEDULE_PATTERN, "example": "nightly-report"}}
_AUTH = {"401": _error("No or wrong bearer token.")}
_ACT = {**_AUTH, "403": _error("The read-only token cannot act.")}


def schema() -> dict[str, Any]:
    """The whole document; cheap enough to build per request."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "bgrunner dashboard API", "version": "1",
                 "description": "Jobs, workers and schedules of a bgrunner store."
                                " Send `Authorization: Bearer <token>`."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "summary": "Jobs, newest first, keyset-paginated by before_id.",
                    "parameters": [
                        {"name": "status", "in": "query",
                         "schema": {"type": "string", "enum": list(STATUSES)}},
                        {"name": "target", "in": "query", "schema": {"type": "string"}},
                        {"name": "queue", "in": "query",
                         "schema": {"type": "string", "pattern": QUEUE_PATTERN}},
                        {"name": "search", "in": "query",
                         "description": "Text searched in params and errors.",
                         "schema": {"type": "string"}},
                        {"name": "before_id", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                    "default": 50}},
                    ],
                    "responses": {
                        "200": _ok("A page of jobs.", {"$ref": "#/components/schemas/JobList"}),
                        "400": _error("A filter is invalid."), **_AUTH,
                    },
                },
                "post": {
                    "operationId": "dispatchJob",
                    "summary": "Submit a job, validated exactly as run_background_job.",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Dispatch"}}}},
                    "responses": {
                        "201": _ok("Recorded.", {"$ref": "#/components/schemas/Created"}),
                        "400": _error("Invalid body or params."),
                        **_ACT,
                    },
                },
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob", "summary": "One job (its status checked against the OS).",
                    "parameters": [_JOB_ID],
                    "responses": {"200": _ok("The job.", {"$ref": "#/components/schemas/Job"}),
                                  "404": _error("No such job."), **_AUTH},
                },
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a pending, retrying or running job.",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _ok("Whether this call cancelled it.", {
                            "type": "object", "required": ["cancelled"],
                            "properties": {"cancelled": {"type": "boolean"}}}),
                        "404": _error("No such job."), **_ACT,
                    },
                },
            },
            "/api/jobs/{job_id}/retry": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "A new job like a failed or cancelled one, linked by retry_of.",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "201": _ok("The new job.", {"$ref": "#/components/schemas/Created"}),
                        "400": _error("The job can no longer be submitted (allowlist)."),
                        "409": _error("The job is not failed or cancelled."),
                        "404": _error("No such job."), **_ACT,
                    },
                },
            },
            "/api/logs": {
                "get": {
                    "operationId": "listLogLines",
                    "summary": "Log lines, newest first, as `bgrunner logs --json` reads them;"
                               " keyset-paginated by before.",
                    "parameters": LOG_PARAMETERS,
                    "responses": {
                        "200": _ok("A page of log lines.", {"$ref": "#/components/schemas/LogPage"}),
                        "400": _error("A filter is invalid (a bad time, level, regular expression,"
                                      " job id or cursor)."),
                        **_AUTH,
                    },
                },
            },
            "/api/workers": {
                "get": {
                    "operationId": "listWorkers",
                    "summary": "The workers seen within host_timeout, most recently seen first.",
                    "responses": {"200": _ok("The live workers.", {
                        "type": "object", "required": ["workers"],
                        "properties": {"workers": {"type": "array",
                                                   "items": {"$ref": "#/components/schemas/Worker"}}}}),
                        **_AUTH},
                },
            },
            "/api/schedules": {
                "get": {
                    "operationId": "listSchedules",
                    "summary": "The allowlist's schedules, by name, with their next and last runs.",
                    "responses": {"200": _ok("The schedules.", {
                        "type": "object", "required": ["schedules"],
                        "properties": {"schedules": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Schedule"}}}}),
                        **_AUTH},
                },
            },
            "/api/schedules/{name}/run": {
                "post": {
                    "operationId": "runSchedule",
                    "summary": "Queue one run of the schedule now (its sequence goes on unchanged).",
                    "parameters": [_NAME],
                    "responses": {
                        "201": _ok("The run's job.", {"$ref": "#/components/schemas/Created"}),
                        "400": _error("The run can no longer be submitted (allowlist)."),
                        "404": _error("No such schedule."), **_ACT,
                    },
                },
            },
            "/api/schedules/{name}/pause": {
                "post": {
                    "operationId": "pauseSchedule",
                    "summary": "Stop firing the schedule, on every host.",
                    "parameters": [_NAME],
                    "responses": {"200": _ok("Paused.", {"$ref": "#/components/schemas/Paused"}),
                                  "404": _error("No such schedule."), **_ACT},
                },
            },
            "/api/schedules/{name}/resume": {
                "post": {
                    "operationId": "resumeSchedule",
                    "summary": "Fire the schedule again from its next occurrence (missed ones are not fired).",
                    "parameters": [_NAME],
                    "responses": {"200": _ok("Resumed.", {"$ref": "#/components/schemas/Paused"}),
                                  "404": _error("No such schedule."), **_ACT},
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Job": JOB,
                "Worker": WORKER,
                "Schedule": SCHEDULE,
                "Paused": {"type": "object", "required": ["name", "paused", "changed"],
                           "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"},
                                          "changed": {"type": "boolean",
                                                      "description": "false: it already was."}}},
                "JobList": {
                    "type": "object", "required": ["jobs", "next_before_id"],
                    "properties": {
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                        "next_before_id": {"type": "string", "nullable": True,
                                           "description": "Pass as before_id for the next page."},
                    },
                },
                "Dispatch": {
                    "type": "object", "required": ["target"],
                    "properties": {
                        "target": {"type": "string", "example": "examples.jobs:SampleJob"},
                        "method": {"type": "string", "default": "handle", "example": "process"},
                        "params": {"oneOf": [{"type": "array", "items": {}}, {"type": "object"}],
                                   "example": {"name": "world"}},
                        "priority": {"type": "integer", "default": 0,
                                     "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
                        "delay": {"type": "number", "default": 0, "minimum": 0,
                                  "maximum": MAX_DELAY},
                        "queue": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                                  "description": "The queue it waits in (default: its target's)."},
                        "unique_key": {"type": "string", "minLength": 1, "maxLength": 200,
                                       "description": "While an active job holds the key, its id is"
                                                      " returned and nothing is recorded."},
                    },
                },
                "LogLine": LOG_LINE,
                "LogPage": {
                    "type": "object", "required": ["lines", "next_before"],
                    "properties": {
                        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/LogLine"}},
                        "next_before": {"type": "string", "nullable": True,
                                        "description": "Pass as before for the next (older) page;"
                                                       " null: no older line matches."},
                    },
                },
                "Created": {"type": "object", "required": ["id"],
                            "properties": {"id": {"type": "string"}}},
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
            },
        },
    }
