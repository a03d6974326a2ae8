"""The command and query API for positions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands import IdempotencyKey, Metadata, PricesRecorded, PriceUpdate, Reply
from domain import commands as cmd
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
from ..errors import ApiError, error_response, field_errors, refusals_by_id
from ..idempotency import as_response, idempotency_key
from ..json import JSONResponse
from ..parameters import CloseQuery, FillQuery, PositionListQuery, PositionQuery
from ..query import parse_query
from ..security import (
    POSITION_WRITERS,
    PRICE_WRITERS,
    READERS_OF_EVERYTHING,
    authenticate,
    visible_owner,
)
from ..services import services_of
from . import resource


def _now() -> datetime:
    return datetime.now(UTC)


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
    services = services_of(request)
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
    services = services_of(request)
    if point is None:
        return _position_response(await queries.get_position(services.pool, position_id, owner))
    at = await log_position(point, services.store)
    async with read_models_at(services.pool, services.store, at, position_id=position_id) as then:
        view = await queries.get_position(then, position_id, owner)
    return _position_response(view, headers={AS_OF_HEADER: str(at.global_position)})


# -- commands ------------------------------------------------------------------------------------


def _command_args(
    request: Request,
    principal: Principal,
    raw: bytes,
    render: Callable[[Any], Response],
    location: str = "body",
) -> tuple[Metadata, Reply[Any], IdempotencyKey | None]:
    """What the service takes with every command: who sent it (the events' metadata), how to
    answer (render a result, or a refusal whose `loc` starts at `location`) and the request's
    idempotency key."""

    def refuse(refusal: Exception) -> Response:
        if isinstance(refusal, InvalidCommand):
            refusal = ApiError(422, "validation failed", field_errors(refusal.errors, location))
        return error_response(request, refusal)

    key = idempotency_key(request, principal.subject, raw)
    return event_metadata(request, principal), Reply(render, refuse), key


async def _change(
    request: Request,
    principal: Principal,
    body: bytes,
    position_id: UUID,
    command: cmd.Command,
    location: str = "body",
) -> Response:
    """Run one command on a position; answer with the position as it left it."""

    def render(view: queries.PositionView | None) -> Response:
        return Response(status_code=204) if view is None else _position_response(view)

    answer = await services_of(request).commands.change(
        position_id,
        command,
        *_command_args(request, principal, body, render, location),
        expected_version=_if_match(request),
        owner=_owned_by(principal),
    )
    return as_response(answer)


async def create_position(request: Request) -> Response:
    principal = authenticate(request, POSITION_WRITERS)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), OpenPositionBody)
    if body.owner is not None and body.owner != principal.subject and principal.role != Role.ADMIN:
        raise ApiError(403, "only an admin may open a position for another owner")
    fields = msgspec.structs.asdict(body)
    owner, status = fields.pop("owner"), fields.pop("status")
    command = cmd.OpenPosition(
        at=_now(),
        position_id=uuid.uuid4(),
        owner=owner or principal.subject,
        pending=status == "pending",
        **fields,
    )

    def render(view: queries.PositionView) -> Response:
        return _position_response(view, 201, {"Location": f"/positions/{view.id}"})

    answer = await services_of(request).commands.open(
        command, *_command_args(request, principal, raw, render)
    )
    return as_response(answer)


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
    principal = authenticate(request, POSITION_WRITERS)
    position_id = _position_id(request)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), body_type)
    command = command_type(at=_now(), **msgspec.structs.asdict(body))
    return await _change(request, principal, raw, position_id, command)


async def amend_position(request: Request) -> Response:
    return await _command_from_body(request, AmendPositionBody, cmd.AmendPosition)


async def increase_position(request: Request) -> Response:
    return await _command_from_body(request, IncreasePositionBody, cmd.IncreasePosition)


async def fill_position(request: Request) -> Response:
    principal = authenticate(request, POSITION_WRITERS)
    position_id = _position_id(request)
    price = parse_query(request, FillQuery).entry_price
    location = "query"
    raw = await read_body(request)
    if raw.strip():
        given = parse_object(decode_object(raw), FillPositionBody).entry_price
        if given is not None:
            price, location = given, "body"
    command = cmd.FillPosition(at=_now(), entry_price=price)
    return await _change(request, principal, raw, position_id, command, location)


async def close_position(request: Request) -> Response:
    principal = authenticate(request, POSITION_WRITERS)
    position_id = _position_id(request)
    query = parse_query(request, CloseQuery)
    exit_price, quantity = query.exit_price, query.quantity
    if exit_price is None:
        exit_price = await queries.current_price(services_of(request).pool, position_id)
    command = cmd.ClosePosition(at=_now(), exit_price=exit_price, quantity=quantity)
    return await _change(request, principal, b"", position_id, command, "query")


async def delete_position(request: Request) -> Response:
    principal = authenticate(request, {Role.ADMIN})
    position_id = _position_id(request)
    return await _change(request, principal, b"", position_id, cmd.DeletePosition(at=_now()))


async def bulk_update(request: Request) -> Response:
    principal = authenticate(request, POSITION_WRITERS)
    raw = await read_body(request)
    body = parse_object(decode_object(raw), BulkUpdateBody)
    updates = parse_object(body.updates, AmendPositionBody, "updates")
    command = cmd.AmendPosition(at=_now(), **msgspec.structs.asdict(updates))
    ids = dict.fromkeys(body.position_ids)  # each position once, in the order given

    def render(results: dict[UUID, queries.PositionView | None | DomainError]) -> Response:
        refused = {i: r for i, r in results.items() if isinstance(r, DomainError)}
        updated = [r for r in results.values() if not isinstance(r, DomainError)]
        return JSONResponse({"updated": updated, "failed": refusals_by_id(refused)})

    answer = await services_of(request).commands.change_each(
        [(position_id, command) for position_id in ids],
        *_command_args(request, principal, raw, render),
        atomic=body.atomic,
        owner=_owned_by(principal),
    )
    return as_response(answer)


async def update_prices(request: Request) -> Response:
    principal = authenticate(request, PRICE_WRITERS)
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

    def render(recorded: PricesRecorded) -> Response:
        return JSONResponse(
            {
                "symbols": recorded.symbols,
                "symbols_updated": recorded.symbols,  # the name clients of the original API read
                "positions_updated": recorded.open_positions,
                "position": recorded.log_position,
            }
        )

    metadata, reply, key = _command_args(request, principal, raw, render)
    update = PriceUpdate(cmd.UpdateMarketPrices(at=_now(), prices=prices), metadata, uuid.uuid4())
    answer = await services_of(request).commands.update_prices(update, reply, key)
    return as_response(answer)


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
