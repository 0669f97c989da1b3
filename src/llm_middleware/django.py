"""Django middleware: ``MIDDLEWARE += ["llm_middleware.django.LLMMiddleware"]``, configured by
``settings.LLM_MIDDLEWARE``; views read ``request.llm``.

Put it before ``CsrfViewMiddleware`` (which reads ``request.POST``) so that the body can still be
read, and after ``SecurityMiddleware``. Sync and async capable; in async mode the core is
awaited directly, with no thread hop.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
    from django.core.handlers.wsgi import LimitedStream
    from django.core.signals import setting_changed
    from django.http import HttpRequest, HttpResponse, HttpResponseBase, QueryDict
    from django.http.request import RawPostDataException
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "llm_middleware.django needs Django: pip install 'llm-middleware[django]'"
    ) from exc

from .config import ConfigError
from .deadline import Deadline
from .engine import CompiledRule, Engine
from .exchange import (
    Headers,
    RequestExchange,
    ResponseExchange,
    plan_body_read,
    rejection,
    weak_etag,
)
from .observability import log_internal_error, publish_result, reset_request_pii, set_request_pii
from .sync import process_request_sync, process_response_sync

# request.__dict__ key: present once we handled the request; holds the result's attribute name
# when it is ours to fill (None when the app already used the name).
_MARK = "_llm_middleware"
_RESULT = "_llm_middleware_result"  # ours, whoever owns the public name


Match = Callable[[str, str], CompiledRule | None]
#: What the hot path needs: (engine, match, result attribute, exact paths, combined search,
#: request classes on which ``getattr``/``setattr`` of the result attribute only read and write
#: the instance's own dict; see ``_default_result``).
Current = tuple[
    Engine, Match, str, frozenset[str], Callable[[str], object] | None, set[type[HttpRequest]]
]


class _EngineFromSettings:
    """Reads ``settings.LLM_MIDDLEWARE`` lazily, once; ``override_settings`` (Django's
    ``setting_changed`` signal) makes the next request rebuild it. No settings lookup on the
    request path."""

    def __init__(self) -> None:
        self._current: Current | None = None
        self._lock = threading.Lock()

    def get(self) -> Engine:
        return self.current()[0]

    def current(self) -> Current:
        """The engine, its fastest rule lookup, the result's attribute name and the router's
        prefilter (see ``Router.prefilter``)."""
        current = self._current
        if current is not None:
            return current
        with self._lock:  # request threads racing to build one engine
            if self._current is None:
                engine = self._build()
                paths, search = engine.router.prefilter()
                matcher = engine.router.matcher()
                name = engine.config.result_attr
                self._current = (engine, matcher, name, paths, search, set())
            return self._current

    def _build(self) -> Engine:
        return Engine(getattr(settings, "LLM_MIDDLEWARE", None))

    def reset(self) -> None:
        self._current = None


engine_from_settings = _EngineFromSettings()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "LLM_MIDDLEWARE":
        engine_from_settings.reset()


setting_changed.connect(_on_setting_changed)


class LLMMiddleware:
    sync_capable = True
    async_capable = True

    def __new__(cls, *args: Any, **kwargs: Any) -> LLMMiddleware:
        # In async mode Django awaits ``middleware(request)``: this class's own subclass makes
        # that call the coroutine function itself, with no sync frame in between. (A subclass
        # of ours keeps its own class, and ``__call__`` hands over to ``__acall__``; its
        # ``__init__`` may take other arguments, and ``copy`` calls ``__new__`` with none.)
        get_response = args[0] if args else kwargs.get("get_response")
        if cls is LLMMiddleware and iscoroutinefunction(get_response):
            cls = _AsyncLLMMiddleware
        return super().__new__(cls)

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        try:
            engine_from_settings.get()  # a broken LLM_MIDDLEWARE stops start-up, with its message
        except ConfigError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        current = engine_from_settings._current
        if current is not None:
            # The unmatched path is the hot one: a set lookup (and one C-level regex search
            # when rules have patterns), then only what every path gets (request.llm = None,
            # unless already set). request.__dict__ is not touched: reading it builds the
            # instance's dict, which costs more than all the rest.
            path = request.path_info
            if path not in current[3] and (current[4] is None or current[4](path) is None):
                if request.__class__ in current[5]:
                    if getattr(request, current[2], None) is None:
                        setattr(request, current[2], None)
                else:
                    _default_result(request, current)
                return self.get_response(request)
        prepared = self._prepare(request)
        if prepared is None:
            return self.get_response(request)
        engine, rule, exchange, deadline = prepared
        try:
            result, body, query = process_request_sync(engine, rule, exchange, deadline)
            _apply(request, engine, result, body, query)
        except Exception as exc:
            log_internal_error("django", exc)
        if exchange.reject is not None:
            return _rejected(engine, rule, request, exchange)
        token = set_request_pii(_pii_values(request))
        try:
            response = self.get_response(request)
        finally:
            reset_request_pii(token)
        side = _response_side(engine, rule, request, response)
        if side is not None:
            try:
                side = process_response_sync(engine, rule, _result(request), side)
                _apply_response(response, side)
            except Exception as exc:
                log_internal_error("django.response", exc)
            engine.finish_response(rule, _result(request), request.method or "GET", None)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        current = engine_from_settings._current
        if current is not None:  # the unmatched path, as in __call__
            path = request.path_info
            if path not in current[3] and (current[4] is None or current[4](path) is None):
                if request.__class__ in current[5]:
                    if getattr(request, current[2], None) is None:
                        setattr(request, current[2], None)
                else:
                    _default_result(request, current)
                return await self.get_response(request)
        prepared = self._prepare(request)
        if prepared is None:
            return await self.get_response(request)
        engine, rule, exchange, deadline = prepared
        try:
            result = await engine.process_request(rule, exchange, deadline)
            _apply(request, engine, result, exchange.new_body, exchange.new_query_string)
        except Exception as exc:
            log_internal_error("django", exc)
        if exchange.reject is not None:
            return _rejected(engine, rule, request, exchange)
        token = set_request_pii(_pii_values(request))
        try:
            pending: Awaitable[HttpResponseBase] = self.get_response(request)
            response = await pending
        finally:
            reset_request_pii(token)
        side = _response_side(engine, rule, request, response)
        if side is not None:
            try:
                await engine.process_response(rule, _result(request), side)
                _apply_response(response, side)
            except Exception as exc:
                log_internal_error("django.response", exc)
            engine.finish_response(rule, _result(request), request.method or "GET", None)
        return response

    def _prepare(
        self, request: HttpRequest
    ) -> tuple[Engine, CompiledRule, RequestExchange, Deadline] | None:
        try:
            current = engine_from_settings.current()
            engine, match, name = current[0], current[1], current[2]
            rule = match(request.method or "GET", request.path_info)
        except Exception as exc:
            log_internal_error("django", exc)
            return None
        if rule is None:
            _default_result(request, current)
            return None
        attrs = request.__dict__
        if _MARK in attrs:  # listed twice in MIDDLEWARE: the outer one ran
            return None
        owned = name not in attrs
        attrs[_MARK] = name if owned else None
        if owned:
            attrs[name] = None
        try:
            deadline = Deadline(rule.budget_s)
            # Django accepts an integer CONTENT_LENGTH (its own test client sends one).
            headers = Headers((k, str(v)) for k, v in request.headers.items())
            exchange = RequestExchange(
                request.method or "GET",
                request.path_info,
                request.META.get("QUERY_STRING", ""),
                headers,
                client_key=engine.client_key(headers, request.META.get("REMOTE_ADDR")),
            )
            if rule.needs_body:
                _read_body(request, exchange, rule.max_body_bytes)
        except Exception as exc:
            log_internal_error("django", exc)
            return None
        return engine, rule, exchange, deadline


class _AsyncLLMMiddleware(LLMMiddleware):
    """``LLMMiddleware`` in async mode (see ``LLMMiddleware.__new__``)."""

    __call__ = LLMMiddleware.__acall__


def _default_result(request: HttpRequest, current: Current) -> None:
    """Views read ``request.llm`` on every path, matched or not; a value an earlier middleware
    put there is the app's and stays. Remembers the request's class when ``getattr``/``setattr``
    of the name reach only the instance's dict (no descriptor, ``__getattr__``,
    ``__getattribute__`` or ``__setattr__`` of the class's own), so that the hot path can use
    them instead of ``request.__dict__``."""
    name, plain = current[2], current[5]
    attrs = request.__dict__
    if name not in attrs:
        attrs[name] = None
    cls = request.__class__
    if cls not in plain and _instance_dict_only(cls, name):
        plain.add(cls)


_ABSENT = object()


def _instance_dict_only(cls: type, name: str) -> bool:
    return (
        getattr(cls, name, _ABSENT) is _ABSENT
        and getattr(cls, "__getattr__", None) is None
        and getattr(cls, "__getattribute__", None) is object.__getattribute__
        and getattr(cls, "__setattr__", None) is object.__setattr__
    )


def _rejected(
    engine: Engine, rule: CompiledRule, request: HttpRequest, exchange: RequestExchange
) -> HttpResponse:
    """The rule fails closed (``on_masking_failure="reject"``): answer without the view."""
    status, headers, body = rejection(exchange) or (500, [], b"")
    response = HttpResponse(body, status=status, content_type=headers[0][1])
    result = _result(request)
    if result is not None:
        engine.finish_response(rule, result, request.method or "GET", "rejected")
    return response


def _read_body(request: HttpRequest, exchange: RequestExchange, cap: int) -> None:
    framed = "transfer-encoding" in exchange.headers
    declared = request.META.get("CONTENT_LENGTH")
    declared = None if declared is None else str(declared)
    if plan_body_read(exchange, declared, cap, framed=framed) is None:
        return
    try:
        exchange.body = request.body
    except RawPostDataException:
        # Something before us read request.POST: the body is gone; see the docs on ordering.
        exchange.body_skip_reason = "body_already_read"
    except RequestDataTooBig:
        exchange.body_skip_reason = "body_too_large"


def _result(request: HttpRequest) -> Any:
    """Our result for this request (``None`` when the app owns the attribute name)."""
    return request.__dict__.get(_RESULT)


def _response_side(
    engine: Engine, rule: CompiledRule, request: HttpRequest, response: HttpResponseBase
) -> ResponseExchange | None:
    """The response as the response interceptors see it, or None (and the reason recorded)."""
    result = _result(request)
    if result is None or result.context is None:
        return None
    method = request.method or "GET"
    try:
        headers = Headers((k, v) for k, v in response.items())
        if response.streaming:
            reason: str | None = "streaming_response"
        else:
            reason = engine.response_skip_reason(
                rule, result, method, response.status_code, headers, len(response.content)
            )
    except Exception as exc:
        log_internal_error("django.response", exc)
        reason = "internal_error"
    if reason is not None:
        engine.finish_response(rule, result, method, reason)
        return None
    return ResponseExchange(response.status_code, headers, response.content)


def _apply_response(response: HttpResponseBase, side: ResponseExchange) -> None:
    if side.new_body is not None:
        response.content = side.new_body
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(side.new_body))
        etag = response.get("ETag")
        if etag:
            response["ETag"] = weak_etag(etag)
    for key, value in side.set_headers.items():
        response[key] = value


def _pii_values(request: HttpRequest) -> frozenset[str]:
    result = _result(request)
    return result.pii_values if result is not None else frozenset()


def _apply(
    request: HttpRequest, engine: Engine, result: Any, body: bytes | None, query: str | None
) -> None:
    attrs = request.__dict__
    attrs[_RESULT] = result
    name = attrs.get(_MARK)
    if name:
        attrs[name] = result
    else:  # the app's own value under that name stays; said once in the log
        publish_result(attrs, engine.config.result_attr, result, "request")
    # The engine reads and writes the query string as UTF-8, whatever the body's charset
    # (which Django would otherwise apply to it: utf-16 garbles it, rot13 raises).
    get = QueryDict(query, encoding="utf-8") if query is not None else None
    if body is not None:
        # request.body, request.POST and json.loads(request.body) all see the masked bytes.
        request._body = body
        request._stream = LimitedStream(io.BytesIO(body), len(body))
        request._read_started = False
        request.META["CONTENT_LENGTH"] = str(len(body))
        for attr in ("_post", "_files"):
            if attr in attrs:
                delattr(request, attr)
    if query is not None:
        request.META["QUERY_STRING"] = query
        request.GET = get
