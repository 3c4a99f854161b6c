"""Live catalog changes over the JSON API (staff with the catalog role): a new item is a candidate
from the next request on, a removed one is never shown or explained again; no retraining. Each
change is recorded, replayed on restart and picked up by the other replicas
(whyrec.service.catalog_changes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from whyrec.core.errors import UnknownItem
from whyrec.core.protocol import CatalogChange, CatalogItem
from whyrec.pipeline import ItemAlreadyListed
from whyrec.service.accounts import Role, StaffAccount
from whyrec.service.deps import ErrorOut, ItemId, Service, require_role

CatalogStaff = Annotated[StaffAccount, Depends(require_role(Role.CATALOG))]

catalog_router = APIRouter(
    prefix="/api/catalog",
    tags=["catalog"],
    responses={
        401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
        503: {"model": ErrorOut, "description": "the database is unavailable: nothing was changed"},
    },
)


@catalog_router.post("/items", response_model=CatalogChange, status_code=status.HTTP_201_CREATED, responses={409: {"model": ErrorOut, "description": "the item is in the catalog already"}})
def add_item(body: CatalogItem, service: Service, staff: CatalogStaff) -> CatalogChange:
    """Add an item to the catalog now: embedded by its text, it is a retrieval candidate from the
    next request on (co-occurrence and the sequence model learn it at the next `whyrec train`). A
    removed item may be added back."""
    try:
        return service.live_catalog.add(body, staff.name)
    except ItemAlreadyListed as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@catalog_router.delete("/items/{item_id}", response_model=CatalogChange, responses={404: {"model": ErrorOut, "description": "no such item, or it is removed already"}})
def remove_item(item_id: ItemId, service: Service, staff: CatalogStaff) -> CatalogChange:
    """Remove an item from the catalog now: it is never a candidate, shown or explained again. It
    may stay in shoppers' histories."""
    try:
        return service.live_catalog.remove(item_id, staff.name)
    except UnknownItem as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
