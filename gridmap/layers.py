"""The layer registry: one declarative definition per layer, read by store, API and maps alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from gridmap.errors import InvalidFeatureError, UnknownLayerError

PropType = Literal["str", "int", "float", "bool", "date", "datetime", "enum", "list"]
GeomType = Literal["Point", "LineString", "Polygon", "MultiPolygon"]

# Geometry types a layer accepts on input, by its declared type.
_ACCEPTS: dict[str, frozenset[str]] = {
    "Point": frozenset({"Point"}),
    "LineString": frozenset({"LineString"}),
    "Polygon": frozenset({"Polygon"}),
    "MultiPolygon": frozenset({"Polygon", "MultiPolygon"}),
}


@dataclass(frozen=True)
class Prop:
    """One typed property of a layer.

    ``sensitive`` marks personal data (masked by role); ``derived`` marks a value the
    server computes (e.g. a household's ``grid_id``), which clients may not set.
    ``format`` names an identifier format (``phone``, ``id_number``: normalised and
    validated by :mod:`gridmap.identifiers`). ``ref`` names the layer whose feature id the
    value is (a relation: the feature must exist, and cannot be deleted while referenced);
    ``same_grid`` adds that the referenced feature lies in the same grid, ``inside`` that
    this feature lies inside the referenced one (:mod:`gridmap.store.relations`).
    """

    name: str
    type: PropType
    zh: str
    en: str
    required: bool = False
    sensitive: bool = False
    derived: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 500
    choice_labels_zh: Mapping[str, str] = field(default_factory=dict)
    format: str | None = None
    ref: str | None = None
    same_grid: bool = False
    inside: bool = False
    indexed: bool = False
    """Looked up by value often enough to deserve a database index (references always are)."""

    @property
    def sql_type(self) -> str:
        """GeoPackage column type."""
        return {
            "str": "TEXT",
            "enum": "TEXT",
            "list": "TEXT",
            "int": "INTEGER",
            "float": "REAL",
            "bool": "BOOLEAN",
            "date": "DATE",
            "datetime": "DATETIME",
        }[self.type]

    def annotation(self) -> Any:
        """The pydantic type that validates this property (strict: no str→number coercion)."""
        num: dict[str, Any] = {}
        if self.minimum is not None:
            num["ge"] = self.minimum
        if self.maximum is not None:
            num["le"] = self.maximum
        match self.type:
            case "str":
                base: Any = Annotated[str, Field(max_length=self.max_length)]
            case "enum":
                base = Literal[self.choices]  # type: ignore[valid-type]
            case "list":
                item: Any = Literal[self.choices] if self.choices else str  # type: ignore[valid-type]
                base = list[item]
            case "int":
                base = Annotated[int, Field(**num)]
            case "float":
                base = Annotated[float, Field(allow_inf_nan=False, **num)]
            case "bool":
                base = bool
            case "date":
                base = Annotated[dt.date, Strict(False)]
            case "datetime":
                base = Annotated[dt.datetime, Strict(False)]
        return base if self.required else base | None


@dataclass(frozen=True)
class Layer:
    """One collection: stable id, titles, geometry type and typed properties."""

    id: str
    zh: str
    en: str
    geometry_type: GeomType
    properties: tuple[Prop, ...]
    description_zh: str = ""
    restricted: bool = False
    """Whole layer is non-public (households, cameras)."""
    temporal: str | None = None
    """Name of the datetime property that gives the layer its time dimension, if any."""
    label: str = "name"
    """Property used as a feature's display label."""
    append_only: bool = False
    """Features are never changed or deleted once written (a ledger: corrections are new rows)."""
    keys: tuple[tuple[str, ...], ...] = ()
    """Properties that identify a feature in files exchanged with other systems, tried in
    order (an import matches rows to stored features by the first whose values it has)."""
    tiles: bool = False
    """Features tile the area (or their parent, the feature they lie ``inside``) without
    overlaps or gaps: zones, communities, grids."""

    def __post_init__(self) -> None:
        names = [p.name for p in self.properties]
        if len(set(names)) != len(names):
            msg = f"layer {self.id}: duplicate property names"
            raise ValueError(msg)
        if "fid" in names or "geom" in names or "version" in names:
            msg = f"layer {self.id}: 'fid', 'geom' and 'version' are reserved"
            raise ValueError(msg)

    @cached_property
    def by_name(self) -> dict[str, Prop]:
        """Properties by name."""
        return {p.name: p for p in self.properties}

    @cached_property
    def _textual(self) -> tuple[Prop, ...]:
        """Properties whose values come back as text or lists (checked after validation)."""
        return tuple(p for p in self.properties if p.type not in ("int", "float", "bool"))

    @property
    def names(self) -> tuple[str, ...]:
        """Property names, in declaration order."""
        return tuple(p.name for p in self.properties)

    @property
    def sensitive(self) -> tuple[str, ...]:
        """Names of sensitive properties."""
        return tuple(p.name for p in self.properties if p.sensitive)

    @property
    def personal(self) -> bool:
        """True if features hold personal data (reads are rate-limited and audited)."""
        return bool(self.sensitive)

    @property
    def grid_scoped(self) -> bool:
        """True if each feature belongs to a grid (``grid_id``), so grid scopes restrict it."""
        return "grid_id" in self.by_name

    def accepts_geometry(self, geom_type: str) -> bool:
        """True if a geometry of ``geom_type`` may be stored in this layer."""
        return geom_type in _ACCEPTS[self.geometry_type]

    @cached_property
    def model(self) -> type[BaseModel]:
        """A strict pydantic model of the properties (unknown keys rejected)."""
        fields: dict[str, Any] = {}
        for p in self.properties:
            fields[p.name] = (p.annotation(), ... if p.required else None)
        return create_model(  # type: ignore[call-overload,no-any-return]
            f"{self.id.title().replace('_', '')}Properties",
            __config__=ConfigDict(strict=True, extra="forbid"),
            **fields,
        )

    @property
    def references(self) -> tuple[Prop, ...]:
        """Properties that hold the id of a feature of another layer."""
        return tuple(p for p in self.properties if p.ref is not None)

    def validate_properties(
        self,
        props: Mapping[str, Any],
        *,
        allow_derived: bool = False,
        partial: bool = False,
        synthetic: bool = False,
    ) -> dict[str, Any]:
        """Validate and normalise a property mapping; raise InvalidFeatureError with reasons.

        Dates and datetimes come back as ISO 8601 strings, lists as lists, identifiers in
        their normal form (:mod:`gridmap.identifiers`; ``synthetic`` admits the sample's
        invented forms); no text may hold control or bidi-override characters. With
        ``partial=True`` required properties may be missing (for merge patches).
        """
        if not allow_derived:
            bad = sorted(k for k in props if k in self.by_name and self.by_name[k].derived)
            if bad:
                msg = f"{', '.join(bad)} of layer {self.id} are computed by the server"
                raise InvalidFeatureError(msg)
        unknown = sorted(k for k in props if k not in self.by_name)
        if unknown:
            msg = (
                f"unknown properties for layer {self.id}: {', '.join(u[:40] for u in unknown[:5])}"
                f"; allowed: {', '.join(self.names)}"
            )
            raise InvalidFeatureError(msg)
        data = dict(props)
        if partial:
            for p in self.properties:
                if p.required and p.name not in data:
                    data[p.name] = _placeholder(p)
        try:
            obj = self.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidFeatureError(_explain(self.id, exc)) from None
        out = obj.model_dump(mode="json")
        for p in self._textual:
            v = out.get(p.name)
            if p.type == "datetime" and isinstance(v, str):
                out[p.name] = _local_time(v)
            elif isinstance(v, str):
                out[p.name] = _clean_text(self.id, p, v, synthetic=synthetic)
            elif isinstance(v, list):
                for item in v:
                    _clean_text(self.id, p, item, synthetic=synthetic)
        if partial:
            return {k: v for k, v in out.items() if k in props}
        return out


LOCAL_TZ = ZoneInfo("Asia/Shanghai")
"""Datetimes are stored as naive local (Beijing) time."""


def _local_time(iso: str) -> str:
    """An ISO datetime as naive local time (an offset is converted, then dropped)."""
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is not None:
        try:
            t = t.astimezone(LOCAL_TZ).replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+14:00 and the like: no local time
            msg = f"{iso[:40]} lies outside the years a date can hold in Beijing time"
            raise InvalidFeatureError(msg) from None
    return t.isoformat()


def _clean_text(layer_id: str, p: Prop, value: str, *, synthetic: bool) -> str:
    """A text value checked (and normalised if it is an identifier)."""
    from gridmap.identifiers import NORMALISERS, IdentifierError, check_text

    try:
        check_text(value)
        if p.format is not None:
            return NORMALISERS[p.format](value, synthetic=synthetic)
    except IdentifierError as exc:
        raise InvalidFeatureError(
            f"invalid properties for layer {layer_id}: {p.name} {exc}"
        ) from None
    return value


def _placeholder(p: Prop) -> Any:
    return {
        "str": "x",
        "enum": p.choices[0] if p.choices else "x",
        "list": [],
        "int": int(p.minimum or 0),
        "float": float(p.minimum or 0.0),
        "bool": False,
        "date": "2000-01-01",
        "datetime": "2000-01-01T00:00:00",
    }[p.type]


def _explain(layer_id: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid properties for layer {layer_id}: " + "; ".join(parts)


def _p(name: str, type_: PropType, zh: str, en: str, **kw: Any) -> Prop:
    if "choices" in kw:
        kw["choices"] = tuple(kw["choices"])
    return Prop(name, type_, zh, en, **kw)


HOUSEHOLD_TAGS = (
    "elderly_alone",
    "hardship",
    "coal_user",
    "heating_subsidy",
    "overseas_family",
    "key_person",
    "disabled",
)
HOUSEHOLD_TAG_ZH = {
    "elderly_alone": "独居老人",
    "hardship": "困难户",
    "coal_user": "散煤用户",
    "heating_subsidy": "取暖补贴",
    "overseas_family": "侨眷",
    "key_person": "重点人员",
    "disabled": "残疾人",
}
VISIT_STATUS = ("visited", "not_home", "refused", "follow_up", "moved_out")
VISIT_STATUS_ZH = {
    "visited": "已走访",
    "not_home": "未遇",
    "refused": "拒访",
    "follow_up": "需跟进",
    "moved_out": "已搬离",
}
FINAL_OUTCOMES = frozenset({"visited", "refused", "moved_out"})
"""Outcomes that close a household in a campaign (the others roll into the next round)."""
RENOVATION_STATUS = ("planned", "approved", "in_progress", "accepted")
RENOVATION_STATUS_ZH = {
    "planned": "计划改造",
    "approved": "已立项",
    "in_progress": "施工中",
    "accepted": "已验收",
}
RENOVATION_WORKS = (
    "roof",
    "pipes",
    "elevators",
    "facade",
    "heating",
    "gas",
    "drainage",
    "parking",
    "lighting",
    "greening",
)
RENOVATION_WORKS_ZH = {
    "roof": "屋面防水",
    "pipes": "管网改造",
    "elevators": "加装电梯",
    "facade": "外墙保温",
    "heating": "供暖改造",
    "gas": "燃气管道",
    "drainage": "雨污分流",
    "parking": "停车设施",
    "lighting": "照明",
    "greening": "绿化",
}
FACILITY_KINDS = (
    "mediation_room",
    "psych_service",
    "elderly_care",
    "party_service",
    "community_office",
    "health_station",
)
FACILITY_KIND_ZH = {
    "mediation_room": "矛盾纠纷调处化解工作室",
    "psych_service": "社会心理服务工作室",
    "elderly_care": "居家养老服务站",
    "party_service": "党群服务中心",
    "community_office": "社区服务站",
    "health_station": "社区卫生服务站",
}

LAYERS: tuple[Layer, ...] = (
    Layer(
        "zones",
        "联合片区",
        "Joint district zones",
        "MultiPolygon",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p("party_committee", "str", "联合党委", "Joint party committee", max_length=200),
            _p("community_ids", "list", "所辖社区", "Communities"),
        ),
        description_zh="街道划分的联合片区，每个片区由若干社区组成。",
        keys=(("name",),),
        tiles=True,
    ),
    Layer(
        "communities",
        "社区",
        "Communities",
        "MultiPolygon",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p("code", "str", "社区代码", "Code", max_length=40),
            _p("zone_id", "int", "所属片区", "Zone", minimum=1, ref="zones", inside=True),
            _p("office_address", "str", "社区办公地址", "Office address"),
            _p("phone", "str", "社区电话", "Phone", max_length=40, format="phone"),
        ),
        keys=(("name",), ("code",)),
        tiles=True,
    ),
    Layer(
        "grids",
        "网格",
        "Grid cells",
        "Polygon",
        (
            _p("code", "str", "网格编码", "Code", required=True, max_length=40),
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p(
                "community_id",
                "int",
                "所属社区",
                "Community",
                required=True,
                minimum=1,
                ref="communities",
                inside=True,
            ),
            _p("worker_id", "str", "网格员编号", "Worker id", max_length=40),
            _p("worker_name", "str", "网格员", "Grid worker", max_length=40),
            _p(
                "worker_phone",
                "str",
                "网格员工作电话",
                "Worker's work phone",
                max_length=40,
                format="phone",
            ),
            _p("target_households", "int", "应访户数", "Target households", minimum=0),
        ),
        keys=(("code",),),
        tiles=True,
    ),
    Layer(
        "buildings",
        "楼栋",
        "Buildings",
        "Polygon",
        (
            _p("address", "str", "地址", "Address", required=True),
            _p("grid_id", "int", "所属网格", "Grid", derived=True, ref="grids"),
            _p(
                "neighbourhood_id",
                "int",
                "所属老旧小区",
                "Old neighbourhood",
                minimum=1,
                ref="old_neighbourhoods",
            ),
            _p("floors", "int", "层数", "Floors", minimum=1, maximum=100),
            _p("units", "int", "单元数", "Units", minimum=1, maximum=50),
            _p("built_year", "int", "建成年份", "Built", minimum=1900, maximum=2100),
            _p(
                "entrance_lon",
                "float",
                "入口经度",
                "Entrance lon (WGS84)",
                minimum=-180,
                maximum=180,
            ),
            _p(
                "entrance_lat", "float", "入口纬度", "Entrance lat (WGS84)", minimum=-90, maximum=90
            ),
        ),
        label="address",
        keys=(("address",),),
    ),
    Layer(
        "households",
        "住户",
        "Households",
        "Point",
        (
            _p(
                "building_id", "int", "楼栋", "Building", minimum=1, ref="buildings", same_grid=True
            ),
            _p("grid_id", "int", "所属网格", "Grid", derived=True, ref="grids"),
            _p("room", "str", "门牌", "Room", max_length=40),
            _p("head_name", "str", "户主", "Head of household", sensitive=True, max_length=40),
            _p("phone", "str", "联系电话", "Phone", sensitive=True, max_length=40, format="phone"),
            _p(
                "id_number",
                "str",
                "身份证号",
                "ID number",
                sensitive=True,
                max_length=40,
                format="id_number",
            ),
            _p("members", "int", "人口", "Members", minimum=0, maximum=50),
            _p(
                "tags",
                "list",
                "标签",
                "Tags",
                choices=HOUSEHOLD_TAGS,
                choice_labels_zh=HOUSEHOLD_TAG_ZH,
            ),
            _p("last_visit_at", "datetime", "最近走访", "Last visit"),
            _p(
                "last_visit_status",
                "enum",
                "走访结果",
                "Visit status",
                choices=VISIT_STATUS,
                choice_labels_zh=VISIT_STATUS_ZH,
            ),
        ),
        restricted=True,
        temporal="last_visit_at",
        label="room",
        keys=(("id_number",), ("building_id", "room")),
    ),
    Layer(
        "visits",
        "走访记录",
        "Visit ledger",
        "Point",
        (
            _p(
                "household_id",
                "int",
                "住户",
                "Household",
                required=True,
                minimum=1,
                ref="households",
                same_grid=True,
            ),
            _p("grid_id", "int", "所属网格", "Grid", derived=True, ref="grids"),
            _p("campaign_id", "int", "走访活动", "Campaign", minimum=1),
            _p("visited_at", "datetime", "走访时间", "Visited at", required=True),
            _p(
                "outcome",
                "enum",
                "走访结果",
                "Outcome",
                required=True,
                choices=VISIT_STATUS,
                choice_labels_zh=VISIT_STATUS_ZH,
            ),
            _p("worker", "str", "走访人", "Visited by", max_length=40, derived=True),
            _p("note", "str", "备注", "Note", sensitive=True, max_length=500),
            _p("client_key", "str", "客户端编号", "Client key", max_length=64, indexed=True),
            _p("recorded_at", "datetime", "录入时间", "Recorded at", derived=True),
        ),
        description_zh="千家万户大走访的走访台账：只增不改，更正即新增一条。",
        restricted=True,
        temporal="visited_at",
        label="outcome",
        append_only=True,
        keys=(("client_key",),),
    ),
    Layer(
        "old_neighbourhoods",
        "老旧小区",
        "Old neighbourhoods",
        "Polygon",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p("built_year", "int", "建成年份", "Built", minimum=1900, maximum=2100),
            _p("households", "int", "户数", "Households", minimum=0),
            _p(
                "renovation_status",
                "enum",
                "改造状态",
                "Renovation status",
                choices=RENOVATION_STATUS,
                choice_labels_zh=RENOVATION_STATUS_ZH,
            ),
            _p("planned_start", "date", "计划开工", "Planned start"),
            _p("planned_end", "date", "计划完工", "Planned end"),
            _p("budget_wan", "float", "预算(万元)", "Budget (10k CNY)", minimum=0),
            _p(
                "works",
                "list",
                "改造内容",
                "Works",
                choices=RENOVATION_WORKS,
                choice_labels_zh=RENOVATION_WORKS_ZH,
            ),
        ),
        keys=(("name",),),
    ),
    Layer(
        "toilets",
        "公厕",
        "Public toilets",
        "Point",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p(
                "status",
                "enum",
                "状态",
                "Status",
                choices=("existing", "planned", "under_construction"),
                choice_labels_zh={
                    "existing": "现有",
                    "planned": "规划",
                    "under_construction": "在建",
                },
            ),
            _p(
                "grade",
                "enum",
                "等级",
                "Grade",
                choices=("I", "II", "III"),
                choice_labels_zh={"I": "一类", "II": "二类", "III": "三类"},
            ),
            _p("open_hours", "str", "开放时间", "Opening hours", max_length=40),
            _p("accessible", "bool", "无障碍", "Accessible"),
            _p("units", "int", "厕位数", "Stalls", minimum=0, maximum=200),
        ),
        keys=(("name",),),
    ),
    Layer(
        "cameras",
        "监控点位",
        "Cameras",
        "Point",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p(
                "kind",
                "enum",
                "类型",
                "Kind",
                choices=("bullet", "dome", "ptz"),
                choice_labels_zh={"bullet": "枪机", "dome": "半球", "ptz": "球机"},
            ),
            _p("direction_deg", "float", "朝向(度)", "Direction (deg)", minimum=0, maximum=360),
            _p("fov_deg", "float", "视场角(度)", "Field of view (deg)", minimum=1, maximum=360),
            _p("range_m", "float", "视距(米)", "Range (m)", minimum=1, maximum=1000),
            _p(
                "status",
                "enum",
                "状态",
                "Status",
                choices=("online", "offline"),
                choice_labels_zh={"online": "在线", "offline": "离线"},
            ),
            _p("installed_at", "date", "安装日期", "Installed"),
        ),
        restricted=True,
        keys=(("name",),),
    ),
    Layer(
        "facilities",
        "服务阵地",
        "Service facilities",
        "Point",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p(
                "kind",
                "enum",
                "类型",
                "Kind",
                required=True,
                choices=FACILITY_KINDS,
                choice_labels_zh=FACILITY_KIND_ZH,
            ),
            _p(
                "level",
                "enum",
                "层级",
                "Level",
                choices=("subdistrict", "community"),
                choice_labels_zh={"subdistrict": "街道级", "community": "社区级"},
            ),
            _p("address", "str", "地址", "Address"),
            _p("hours", "str", "开放时间", "Hours", max_length=60),
            _p("area_m2", "float", "面积(平方米)", "Floor area (m²)", minimum=0),
        ),
        keys=(("name",),),
    ),
    Layer(
        "roads",
        "道路",
        "Roads",
        "LineString",
        (
            _p("name", "str", "名称", "Name", required=True, max_length=100),
            _p(
                "road_class",
                "enum",
                "等级",
                "Class",
                choices=("arterial", "secondary", "lane", "footpath"),
                choice_labels_zh={
                    "arterial": "主干道",
                    "secondary": "次干道",
                    "lane": "支路",
                    "footpath": "步行道",
                },
            ),
            _p("walkable", "bool", "可步行", "Walkable"),
            _p("oneway", "bool", "单行", "One-way"),
            _p(
                "status",
                "enum",
                "状态",
                "Status",
                choices=("existing", "planned"),
                choice_labels_zh={"existing": "现有", "planned": "规划"},
            ),
        ),
    ),
)

REGISTRY: dict[str, Layer] = {layer.id: layer for layer in LAYERS}
"""Every layer by id."""


def get_layer(layer_id: str) -> Layer:
    """Return the layer with ``layer_id`` or raise UnknownLayerError."""
    try:
        return REGISTRY[layer_id]
    except KeyError:
        msg = f"no collection {layer_id[:60]!r}; collections are: {', '.join(REGISTRY)}"
        raise UnknownLayerError(msg) from None


def layer_ids(*, include_restricted: bool = True) -> Iterable[str]:
    """Ids of the registered layers, in registry order."""
    return (lay.id for lay in LAYERS if include_restricted or not lay.restricted)
