"""The command and query API for positions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands import AtomicFailure, Metadata, Outcome, PositionHandlers, PriceUpdate
from domain.commands import (
    AmendPosition,
    ClosePosition,
    DeletePosition,
    FillPosition,
    IncreasePosition,
    OpenPosition,
    UpdateMarketPrices,
)
from domain.errors import DomainError, InvalidCommand
from projections import queries
from projections.as_of import read_models_at
from projections.queries import PositionFilter

from ..as_of import AS_OF_HEADER, log_position
from ..auth import Principal, Role
from ..bodies import (
    MAX_BATCH,
    AmendPositionBody,
    BulkUpdateBody,
    FillPositionBody,
    IncreasePositionBody,
    OpenPositionBody,
    decode_object,
    parse_object,
    read_body,
)
from ..context import event_metadata
from ..errors import ApiError, as_api_error, error_body, field_errors
from ..idempotency import run_command
from ..json import JSONResponse
from ..parameters import CloseQuery, FillQuery, PositionListQuery, PositionQuery
from ..query import parse_query
from ..security import (
    POSITION_WRITERS,
    PRICE_WRITERS,
    READERS_OF_EVERYTHING,
    authenticate,
    require,
    visible_owner,
)
from ..transactions import GroupWriteFailed, shared_transaction
from . import resource


def _now() -> datetime:
    return datetime.now(UTC)


def _services(request: Request) -> Any:
    return request.app.state.services


def _owned_by(principal: Principal) -> str | None:
    """The owner a caller's commands are confined to (None: any position)."""
    return None if principal.role == Role.ADMIN else principal.subject


def _position_response(
    view: queries.PositionView | None, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if view is None:
        raise ApiError(404, "position not found")
    return JSONResponse(
        view, status_code=status, headers={"ETag": f'"{view.version}"', **(headers or {})}
    )


def _position_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["position_id"])
    except ValueError:
        # Not an id any position could have: as absent as a position that does not exist.
        raise ApiError(404, "position not found") from None


# -- queries -------------------------------------------------------------------------------------


async def list_positions(request: Request) -> Response:
    principal = authenticate(request)
    query = parse_query(request, PositionListQuery)
    where = PositionFilter(
        owner=visible_owner(principal, query.owner),
        status=query.status,
        symbol=query.symbol,
        strategy=query.strategy,
        side=query.side,
    )
    limit, offset, point = query.limit, query.offset, query.point
    services = _services(request)
    if point is None:
        views, total = await queries.list_positions(services.pool, where, limit, offset)
        return JSONResponse(views, headers={"X-Total-Count": str(total)})
    at = await log_position(point, services.store)
    async with read_models_at(services.pool, services.store, at, owner=where.owner) as then:
        views, total = await queries.list_positions(then, where, limit, offset)
    headers = {"X-Total-Count": str(total), AS_OF_HEADER: str(at.global_position)}
    return JSONResponse(views, headers=headers)


async def get_position(request: Request) -> Response:
    principal = authenticate(request)
    position_id = _position_id(request)
    owner = None if principal.role in READERS_OF_EVERYTHING else principal.subject
    point = parse_query(request, PositionQuery).point
    services = _services(request)
    if point is None:
        return _position_response(await queries.get_position(services.pool, position_id, owner))
    at = await log_position(point, services.store)
    async with read_models_at(services.pool, services.store, at, position_id=position_id) as then:
        view = await queries.get_position(then, position_id, owner)
    return _position_response(view, headers={AS_OF_HEADER: str(at.global_position)})


# -- commands ------------------------------------------------------------------------------------


async def _command(
    request: Request,
    principal: Principal,
    body: bytes,
    position_id: UUID,
    command: Any,
    *,
    status: int = 200,
    expected_version: int | None = None,
    location: str = "body",
) -> Response:
    """Run one position command and answer with the position as the command left it.

    `location` says where the command's fields came from, for the `loc` of a refusal.
    """
    handlers: PositionHandlers = _services(request).handlers
    metadata = event_metadata(request, principal)

    async def operation(connection: asyncpg.Connection) -> Response:
        try:
            outcome = await handlers.handle(
                position_id,
                command,
                metadata,
                expected_version=expected_version,
                owner=_owned_by(principal),
                connection=connection,
            )
        except InvalidCommand as refusal:
            raise _invalid(refusal, location) from refusal
        if outcome.state is not None and outcome.state.deleted:
            return Response(status_code=204)
        view = await queries.get_position(connection, position_id, None)
        headers = {"Location": f"/positions/{position_id}"} if status == 201 else None
        return _position_response(view, status, headers)

    return await run_command(request, principal.subject, body, operation)


def _invalid(refusal: InvalidCommand, location: str) -> ApiError:
    return ApiError(422, "validation failed", field_errors(refusal.errors, location))


async def create_position(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, POSITION_WRITERS)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), OpenPositionBody)
    if body.owner is not None and body.owner != principal.subject and principal.role != Role.ADMIN:
        raise ApiError(403, "only an admin may open a position for another owner")
    fields = msgspec.structs.asdict(body)
    owner, status = fields.pop("owner"), fields.pop("status")
    position_id = uuid.uuid4()
    command = OpenPosition(
        at=_now(),
        position_id=position_id,
        owner=owner or principal.subject,
        pending=status == "pending",
        **fields,
    )
    if "idempotency-key" not in request.headers:  # a keyed request stores its answer: alone
        metadata = event_metadata(request, principal)
        try:
            view = await _services(request).opens.submit((command, metadata))
        except InvalidCommand as refusal:
            raise _invalid(refusal, "body") from refusal
        except GroupWriteFailed:
            pass  # refused as a group (perhaps for another's command): this one alone, below
        else:
            return _position_response(view, 201, {"Location": f"/positions/{position_id}"})
    return await _command(request, principal, raw, position_id, command, status=201)


async def open_together(
    services: Any, opens: list[tuple[OpenPosition, Metadata]]
) -> list[queries.PositionView | DomainError]:
    """New positions of several requests, in one transaction (see GroupCommit)."""
    correlation_ids = [metadata["correlation_id"] for _, metadata in opens]
    async with shared_transaction(services, correlation_ids) as connection:
        outcomes = await services.handlers.open_together(opens, connection=connection)
        views = await queries.get_positions(
            connection, [command.position_id for command, _ in opens]
        )
    return [
        outcome if isinstance(outcome, DomainError) else views[command.position_id]
        for (command, _), outcome in zip(opens, outcomes, strict=True)
    ]


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    try:
        return int(raw.strip().removeprefix("W/").strip('"'))
    except ValueError:
        raise ApiError(
            422,
            "validation failed",
            [{"loc": ["header", "If-Match"], "msg": 'must be a position version, e.g. "3"'}],
        ) from None


async def _command_from_body(request: Request, body_type: type, command_type: type) -> Response:
    """A command on a position whose fields are exactly those of the request's body."""
    principal = authenticate(request)
    require(principal, POSITION_WRITERS)
    position_id = _position_id(request)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), body_type)
    command = command_type(at=_now(), **msgspec.structs.asdict(body))
    return await _command(
        request, principal, raw, position_id, command, expected_version=_if_match(request)
    )


async def amend_position(request: Request) -> Response:
    return await _command_from_body(request, AmendPositionBody, AmendPosition)


async def increase_position(request: Request) -> Response:
    return await _command_from_body(request, IncreasePositionBody, IncreasePosition)


async def fill_position(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, POSITION_WRITERS)
    position_id = _position_id(request)
    price = parse_query(request, FillQuery).entry_price
    location = "query"
    raw = await read_body(request)
    if raw.strip():
        given = parse_object(decode_object(raw), FillPositionBody).entry_price
        if given is not None:
            price, location = given, "body"
    command = FillPosition(at=_now(), entry_price=price)
    return await _command(
        request,
        principal,
        raw,
        position_id,
        command,
        expected_version=_if_match(request),
        location=location,
    )


async def close_position(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, POSITION_WRITERS)
    position_id = _position_id(request)
    query = parse_query(request, CloseQuery)
    exit_price, quantity = query.exit_price, query.quantity
    if exit_price is None:
        exit_price = await queries.current_price(_services(request).pool, position_id)
    command = ClosePosition(at=_now(), exit_price=exit_price, quantity=quantity)
    return await _command(
        request,
        principal,
        b"",
        position_id,
        command,
        expected_version=_if_match(request),
        location="query",
    )


async def delete_position(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, {Role.ADMIN})
    position_id = _position_id(request)
    return await _command(
        request,
        principal,
        b"",
        position_id,
        DeletePosition(at=_now()),
        expected_version=_if_match(request),
    )


async def bulk_update(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, POSITION_WRITERS)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), BulkUpdateBody)
    updates = parse_object(body.updates, AmendPositionBody, "updates")
    command = AmendPosition(at=_now(), **msgspec.structs.asdict(updates))
    ids = list(dict.fromkeys(body.position_ids))  # each position once, in the order given
    handlers: PositionHandlers = _services(request).handlers
    metadata = event_metadata(request, principal)
    owner = _owned_by(principal)

    async def operation(connection: asyncpg.Connection) -> Response:
        if body.atomic:
            try:
                outcomes = await handlers.handle_atomically(
                    [(i, command) for i in ids], metadata, owner=owner, connection=connection
                )
            except AtomicFailure as failure:
                return JSONResponse(
                    {
                        **error_body(request, 409, str(failure)),
                        "failed": _failures(failure.failures),
                    },
                    status_code=409,
                )
            results: dict[UUID, Outcome | Exception] = dict(zip(ids, outcomes, strict=True))
        else:
            results = await handlers.handle_each(
                [(i, command) for i in ids], metadata, owner=owner, connection=connection
            )
        return await _bulk_answer(connection, results)

    return await run_command(request, principal.subject, raw, operation)


def _failures(failures: dict[UUID, Exception]) -> list[dict[str, Any]]:
    """Each refused id with the status and reason it would have had on its own."""
    answer = []
    for position_id, failure in failures.items():
        error = as_api_error(failure)
        if error is None:
            raise failure
        answer.append(
            {
                "id": position_id,
                "status": error.status,
                "detail": error.detail,
                **({"errors": error.errors} if error.errors else {}),
            }
        )
    return answer


async def _bulk_answer(connection: asyncpg.Connection, results: dict[UUID, Any]) -> Response:
    failures = {i: r for i, r in results.items() if isinstance(r, Exception)}
    updated = [
        await queries.get_position(connection, position_id, None)
        for position_id, result in results.items()
        if not isinstance(result, Exception)
    ]
    return JSONResponse({"updated": updated, "failed": _failures(failures)})


async def update_prices(request: Request) -> Response:
    principal = authenticate(request)
    require(principal, PRICE_WRITERS)
    raw = await read_body(request)
    data = decode_object(raw)
    errors = []
    if not data:
        errors.append({"loc": ["body"], "msg": "must name at least one symbol"})
    if len(data) > MAX_BATCH:
        errors.append({"loc": ["body"], "msg": f"at most {MAX_BATCH} symbols"})
    prices: dict[str, Decimal] = {}
    for symbol, price in data.items():
        try:
            prices[symbol] = msgspec.convert(price, Decimal, strict=False)
        except msgspec.ValidationError:
            errors.append({"loc": ["body", symbol], "msg": "must be a number"})
    if errors:
        raise ApiError(422, "validation failed", errors)
    services = _services(request)
    update = PriceUpdate(
        UpdateMarketPrices(at=_now(), prices=prices),
        event_metadata(request, principal),
        uuid.uuid4(),
    )
    if "idempotency-key" not in request.headers:  # a keyed request stores its answer: alone
        try:
            return JSONResponse(await services.price_updates.submit(update))
        except GroupWriteFailed:
            pass  # refused as a group: this one alone, below (its event id keeps it once)

    async def operation(connection: asyncpg.Connection) -> Response:
        [answer] = await _price_answers(services.handlers, connection, [update])
        if isinstance(answer, DomainError):
            raise answer
        return JSONResponse(answer)

    return await run_command(request, principal.subject, raw, operation)


async def update_prices_together(
    services: Any, updates: list[PriceUpdate]
) -> list[dict[str, Any] | DomainError]:
    """Price updates of several requests, in one transaction (see GroupCommit)."""
    correlation_ids = [update.metadata["correlation_id"] for update in updates]
    async with shared_transaction(services, correlation_ids) as connection:
        return await _price_answers(services.handlers, connection, updates)


async def _price_answers(
    handlers: PositionHandlers, connection: asyncpg.Connection, updates: list[PriceUpdate]
) -> list[dict[str, Any] | DomainError]:
    results = await handlers.update_market_prices(updates, connection=connection)
    recorded = [result for result in results if not isinstance(result, DomainError)]
    open_positions = await queries.count_open(
        connection, sorted({symbol for event in recorded for symbol in event.data["prices"]})
    )
    return [
        result
        if isinstance(result, DomainError)
        else {
            "symbols": (symbols := sorted(result.data["prices"])),
            "symbols_updated": symbols,  # the name clients of the original API read
            "positions_updated": sum(open_positions.get(s, 0) for s in result.data["prices"]),
            "position": result.global_position,
        }
        for result in results
    ]


routes = [
    # The literal paths first: a 405's Allow header lists the methods of the first route whose
    # path matches. Then the busiest.
    Route("/positions/bulk-update", bulk_update, methods=["POST"]),
    Route("/positions/update-prices", update_prices, methods=["POST"]),
    resource(
        "/positions/{position_id}", get=get_position, put=amend_position, delete=delete_position
    ),
    resource("/positions", get=list_positions, post=create_position),
    Route("/positions/{position_id}/open", fill_position, methods=["POST"]),
    Route("/positions/{position_id}/increase", increase_position, methods=["POST"]),
    Route("/positions/{position_id}/close", close_position, methods=["POST"]),
]
