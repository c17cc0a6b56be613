"""Walking the pages of a collection: one strategy per pagination style, and stop guards.

Each strategy says which request comes first and, from an answer, which comes next or that the
walk is over. The walk itself (:func:`walk_pages`) owns the guards every style shares: an empty
page ends it, a cursor or link seen before fails it (the server is going round in circles), so
does a page holding the items of an earlier page (the same loop behind a link spelled
differently), and a page cap fails it rather than fetching without end.
"""

import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx

from osop_dagster._json_text import JsonText, encode
from osop_dagster.errors import OsopExecutionError
from osop_dagster.resources._api_runtime import PaginationSettings
from osop_dagster.resources._progress import Progress
from osop_dagster.resources._redaction import mask_url

# Where an item list usually lives in an answer that is an object.
ITEM_KEYS: Final = ("data", "items", "records", "results")

_CURSOR_PATHS: Final = ("next_cursor", "pagination.next_cursor", "meta.next_cursor")

_MISSING: Final = object()

# A long walk reports to the run's log this often.
PROGRESS_EVERY_SEC: Final = 10.0


def get_path(value: Any, path: str, default: Any = _MISSING) -> Any:
    """Follow a dotted path of keys and list indexes; ``default`` (or KeyError) when absent."""
    current = value
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                break
            current = current[index]
        else:
            break
    else:
        return current
    if default is _MISSING:
        raise KeyError(path)
    return default


def find_items(body: Any, items_path: str | None) -> list[Any] | None:
    """The item list of an answer: at ``items_path``, or the body itself, or a usual key."""
    if items_path:
        found = get_path(body, items_path, None)
        return found if isinstance(found, list) else None
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping):
        for key in ITEM_KEYS:
            if isinstance(body.get(key), list):
                return body[key]
    return None


@dataclass(frozen=True)
class PageRequest:
    """The next page to fetch: parameters over the node's query, or a whole URL from a link."""

    params: dict[str, Any] = field(default_factory=dict)
    url: str | None = None


class Paginator(Protocol):
    """A pagination style."""

    def first(self) -> PageRequest:
        """The request of the first page."""
        ...

    def next(self, response: httpx.Response, body: Any, items: list[Any]) -> PageRequest | None:
        """The request of the page after ``response``, or ``None`` when this was the last."""
        ...

    def marker(self, request: PageRequest) -> str | None:
        """What must never repeat (a cursor, a link), or ``None`` for counting styles."""
        ...


def next_link(response: httpx.Response) -> str | None:
    """The absolute URL of the ``Link: <...>; rel="next"`` answer header, if any."""
    link = response.links.get("next")
    if not link or not link.get("url"):
        return None
    return str(response.url.join(link["url"]))


class LinkPaginator:
    """Follows ``Link: rel="next"`` answer headers (RFC 8288)."""

    def first(self) -> PageRequest:
        return PageRequest()

    def next(self, response: httpx.Response, body: Any, items: list[Any]) -> PageRequest | None:
        url = next_link(response)
        return None if url is None else PageRequest(url=url)

    def marker(self, request: PageRequest) -> str | None:
        return request.url


def _with_size(params: dict[str, Any], settings: PaginationSettings) -> dict[str, Any]:
    """``params`` plus the page size parameter, when the settings ask for a size."""
    if settings.page_size:
        params[settings.effective_size_param] = settings.page_size
    return params


class PageNumberPaginator:
    """Sends page numbers: ``?page=1``, ``?page=2``, ..."""

    def __init__(self, settings: PaginationSettings) -> None:
        self.settings = settings
        self.page = settings.start_page

    def _request(self, page: int) -> PageRequest:
        return PageRequest(params=_with_size({self.settings.page_param: page}, self.settings))

    def first(self) -> PageRequest:
        return self._request(self.page)

    def next(self, response: httpx.Response, body: Any, items: list[Any]) -> PageRequest | None:
        self.page += 1
        return self._request(self.page)

    def request_at(self, index: int, page_size: int) -> PageRequest:
        """The request of the page ``index`` pages after the first."""
        return self._request(self.settings.start_page + index)

    def marker(self, request: PageRequest) -> str | None:
        return None


class OffsetPaginator:
    """Sends offsets: ``?offset=0``, then the count of items received so far."""

    def __init__(self, settings: PaginationSettings) -> None:
        self.settings = settings
        self.offset = 0

    def _request(self, offset: int) -> PageRequest:
        return PageRequest(params=_with_size({self.settings.offset_param: offset}, self.settings))

    def first(self) -> PageRequest:
        return self._request(self.offset)

    def next(self, response: httpx.Response, body: Any, items: list[Any]) -> PageRequest | None:
        # Advancing by what arrived, not by page_size, stays right when the server caps the size.
        self.offset += len(items)
        return self._request(self.offset)

    def request_at(self, index: int, page_size: int) -> PageRequest:
        """The request of the page ``index`` pages after the first, if every page is full."""
        return self._request(index * page_size)

    def marker(self, request: PageRequest) -> str | None:
        return None


class CursorPaginator:
    """Sends the cursor of the previous answer: ``?cursor=<next_cursor>``."""

    def __init__(self, settings: PaginationSettings) -> None:
        self.settings = settings

    def _params(self, cursor: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if cursor is not None:
            params[self.settings.cursor_param] = cursor
        return _with_size(params, self.settings)

    def first(self) -> PageRequest:
        return PageRequest(params=self._params(None))

    def next(self, response: httpx.Response, body: Any, items: list[Any]) -> PageRequest | None:
        paths = (self.settings.cursor_path,) if self.settings.cursor_path else _CURSOR_PATHS
        cursor = next(
            (found for path in paths if (found := get_path(body, path, None)) not in (None, "")),
            None,
        )
        return None if cursor is None else PageRequest(params=self._params(cursor))

    def marker(self, request: PageRequest) -> str | None:
        cursor = request.params.get(self.settings.cursor_param)
        return None if cursor is None else f"cursor {cursor!r}"


_PAGINATORS: Final[dict[str, Callable[[PaginationSettings], Paginator]]] = {
    "page_number": PageNumberPaginator,
    "offset": OffsetPaginator,
    "cursor": CursorPaginator,
    "link": lambda settings: LinkPaginator(),
}


def make_paginator(settings: PaginationSettings) -> Paginator:
    """The strategy for ``settings.style``."""
    return _PAGINATORS[settings.style](settings)


@dataclass
class PagedResult:
    """What a walk through the pages gathered.

    Attributes:
        items: The items of every page, in order, as a list or, when the walk was asked for
            text, as a :class:`JsonText` list with a run per page; ``None`` when the single
            answer had no item list (``auto`` mode), in which case ``body`` is the output.
        body: The last answer's body.
        pages: How many pages were fetched.
        warnings: Oddities worth a look (a total that changed while paging).
        last_response: The last answer.
        count: How many items arrived.
    """

    items: list[Any] | JsonText | None
    body: Any
    pages: int
    warnings: list[str]
    last_response: httpx.Response
    count: int


class _Collected:
    """The items of the pages so far, as Python values or encoded a page at a time."""

    def __init__(self, as_text: bool) -> None:
        self.items: list[Any] | None = None if as_text else []
        self.runs: list[bytes] = []
        self.count = 0

    def add(self, items: list[Any], describe: str) -> str:
        """Keep a page's items; returns the digest of their encoding."""
        self.count += len(items)
        try:
            encoded = encode(items)
        except (TypeError, ValueError) as error:
            if self.items is None:
                raise OsopExecutionError(
                    f"{describe}: page items cannot be stored as JSON: {error}. The answer holds "
                    "NaN, an infinity or text that is not valid Unicode."
                ) from error
            encoded = json.dumps(items, separators=(",", ":"), default=str).encode()
        if self.items is not None:
            self.items.extend(items)
        else:
            self.runs.append(encoded[1:-1])
        return hashlib.sha256(encoded).hexdigest()

    def value(self) -> list[Any] | JsonText:
        return self.items if self.items is not None else JsonText.from_runs(self.runs)


FetchPage = Callable[[PageRequest], tuple[httpx.Response, Any]]


def walk_pages(
    fetch: FetchPage,
    settings: PaginationSettings | None,
    *,
    max_pages: int,
    describe: str,
    log: logging.Logger,
    concurrency: int = 1,
    as_text: bool = False,
) -> PagedResult:
    """Fetch pages until the style says the collection is exhausted.

    Args:
        fetch: Sends one page request and returns the answer and its parsed body. With
            ``concurrency`` above 1 it is called from several threads at once.
        settings: The node's pagination settings, or ``None`` for ``auto`` mode (follow
            ``Link: rel="next"`` when present, keep the item list when there is one).
        max_pages: The page cap; fetching more fails.
        describe: ``"Node 'x': GET <masked URL>"`` for messages.
        log: Receives a WARNING for each oddity.
        concurrency: Pages in flight at once, for addressable styles with a known total.
        as_text: Keep the items as JSON text, a run per page, rather than as Python values.

    Raises:
        OsopExecutionError: A cursor or link repeated, the page cap was exceeded, or an answer
            had no item list where one was required.
    """
    paginator: Paginator = LinkPaginator() if settings is None else make_paginator(settings)
    items_path = settings.items_path if settings else None
    total_path = settings.total_path if settings else None
    cap = settings.max_pages if settings and settings.max_pages else max_pages
    with _Prefetcher(fetch, concurrency) as prefetcher:
        return _walk(
            prefetcher, paginator, settings, items_path, total_path, cap, describe, log, as_text
        )


def _walk(
    prefetcher: "_Prefetcher",
    paginator: Paginator,
    settings: PaginationSettings | None,
    items_path: str | None,
    total_path: str | None,
    cap: int,
    describe: str,
    log: logging.Logger,
    as_text: bool,
) -> PagedResult:
    request = paginator.first()
    seen_markers: set[str] = set()
    # Digest of each non-empty page's items -> its page number.
    seen_pages: dict[str, int] = {}
    collected = _Collected(as_text)
    warnings: list[str] = []
    total: Any = None
    pages = 0
    progress = Progress(log, PROGRESS_EVERY_SEC)
    while True:
        pages += 1
        response, body = prefetcher.take(request)
        items = find_items(body, items_path)
        seen_markers.add(str(response.request.url))
        if (marker := paginator.marker(request)) is not None:
            seen_markers.add(marker)

        if items is None and pages > 1:
            # Some APIs leave the list out of the page after the last one: nothing more to read.
            items = []
        if items is None:
            if settings is None and next_link(response) is None:
                # auto mode on an answer that is not a collection: the body is the output.
                return PagedResult(None, body, pages, warnings, response, 0)
            where = f"at {items_path!r}" if items_path else "in the answer"
            raise OsopExecutionError(
                f"{describe}: the first page has no item list {where}; expected a list body or a "
                f"list under one of {', '.join(ITEM_KEYS)}. Set pagination.items_path.",
                metadata={"osop/pages": pages},
            )
        # A page repeating an earlier one fails the walk below, once a repeated cursor or link
        # (the more telling reason) has had its chance to be named.
        repeats = None
        digest = collected.add(items, describe)
        if items:
            repeats = seen_pages.get(digest)
            seen_pages.setdefault(digest, pages)
        progress.report("%s: %d pages, %d items so far.", describe, pages, collected.count)

        if total_path:
            page_total = get_path(body, total_path, None)
            if total is not None and page_total != total:
                message = (
                    f"The total at {total_path!r} changed from {total!r} to {page_total!r} at "
                    f"page {pages}; the collection changed while it was read, so items may be "
                    "missing or repeated."
                )
                warnings.append(message)
                log.warning("%s: %s", describe, message)
            total = page_total

        if not items:
            break
        if pages == 1 and isinstance(total, int) and isinstance(paginator, _ADDRESSABLE):
            # Every page's address is known now: the later ones can be on their way while this
            # walk checks them one by one, in order, as if it had fetched them itself.
            page_size = (settings.page_size if settings else None) or len(items)
            last = min(-(-total // page_size), cap)
            prefetcher.plan(paginator.request_at(index, page_size) for index in range(1, last))
        following = None
        if not (isinstance(total, int) and collected.count >= total):
            following = paginator.next(response, body, items)
        if following is not None and following.url is not None:
            _check_same_origin(response.request.url, following.url, describe)

        marker = None if following is None else paginator.marker(following)
        if following is not None and marker is not None and marker in seen_markers:
            shown = mask_url(marker) if following.url else marker
            raise OsopExecutionError(
                f"{describe}: page {pages} points to a next page already fetched ({shown}); "
                "the server's pagination is going round in circles, so paging stopped.",
                metadata={"osop/pages": pages},
            )
        if repeats is not None:
            raise OsopExecutionError(
                f"{describe}: page {pages} ({mask_url(response.request.url)}) holds the same "
                f"{len(items)} items as page {repeats}; the server's pagination is going round "
                "in circles, so paging stopped.",
                metadata={"osop/pages": pages},
            )
        if following is None:
            break
        if pages >= cap:
            raise OsopExecutionError(
                f"{describe}: more than {cap} pages; stopped at the page cap with "
                f"{collected.count} items. Raise pagination.max_pages (or the resource's "
                "max_pages) if the collection really is that large, or set page_size.",
                metadata={"osop/pages": pages},
            )
        request = following

    return PagedResult(collected.value(), body, pages, warnings, response, collected.count)


class _Prefetcher:
    """Fetches planned page requests ahead, a bounded number at a time, and hands them out in order.

    A request the walk asks for that is not the next planned one (the server capped the page
    size, or the walk stops early) drops the plan: what is in flight is awaited and discarded,
    and the walk goes on one page at a time. Without a plan, or with a concurrency of 1, every
    request is sent when it is asked for.
    """

    def __init__(self, fetch: FetchPage, concurrency: int) -> None:
        self.fetch = fetch
        self.concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._planned: Iterator[PageRequest] = iter(())
        self._in_flight: deque[tuple[PageRequest, Future[tuple[httpx.Response, Any]]]] = deque()

    def __enter__(self) -> "_Prefetcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._drop_plan()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def plan(self, requests: Iterable[PageRequest]) -> None:
        """Start fetching ``requests`` ahead of the walk."""
        if self.concurrency <= 1:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="osop-page"
            )
        self._planned = iter(requests)
        self._top_up()

    def take(self, request: PageRequest) -> tuple[httpx.Response, Any]:
        """The answer to ``request``: prefetched when it was the next planned, else fetched now."""
        if self._in_flight and self._in_flight[0][0] == request:
            _, future = self._in_flight.popleft()
            self._top_up()
            return future.result()
        self._drop_plan()
        return self.fetch(request)

    def _top_up(self) -> None:
        assert self._executor is not None  # a plan creates it
        while len(self._in_flight) < self.concurrency:
            request = next(self._planned, None)
            if request is None:
                return
            self._in_flight.append((request, self._executor.submit(self.fetch, request)))

    def _drop_plan(self) -> None:
        self._planned = iter(())
        while self._in_flight:
            _, future = self._in_flight.popleft()
            if not future.cancel():
                # Already sent: let it finish so no thread outlives the walk; its answer (or
                # error) is not needed.
                future.exception()


_ADDRESSABLE: Final = (PageNumberPaginator, OffsetPaginator)


def _check_same_origin(current: httpx.URL, next_url: str, describe: str) -> None:
    # The next request carries the bearer token: a link to another host would hand it over.
    target = httpx.URL(next_url)
    if (target.scheme, target.host, target.port) != (current.scheme, current.host, current.port):
        raise OsopExecutionError(
            f"{describe}: the next-page link {mask_url(target)} leads to another origin than "
            f"{mask_url(current.copy_with(query=None))}; it is not followed, because the request "
            "would carry the credentials there."
        )
