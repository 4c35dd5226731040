"""Forms of the project pages: the new-project wizard and the environment's actions.

Forms check shape (types, lengths, choices); the catalog's rules and every refusal that
depends on the stack come from ``stacks.catalog.offers`` and the ``stacks.runtime.lifecycle`` services.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.db.models import Prefetch
from django.http import HttpRequest, QueryDict
from django.urls import reverse_lazy

from projects.models import Environment, Membership, User
from projects.services import Origin, ServiceError
from stacks.catalog.offers import compatibility_problems, new_stack_refusal, pickable_versions
from stacks.models import (
    CompatibilityRule,
    Component,
    ComponentVersion,
    Framework,
    KernelVersion,
    Region,
    Size,
    StackTemplate,
    StackTemplateComponent,
)
from stacks.runtime import lifecycle
from stacks.runtime.policy import stack_policy
from stacks.runtime.spec import ComponentRow, SpecError, validate_component_row

WIZARD_URL = reverse_lazy("stacks:project_new")
# Choosing in a select (or a radio, a checkbox) re-renders the wizard through htmx.
LIVE = {"hx-post": WIZARD_URL, "hx-trigger": "change", "hx-target": "#wizard", "hx-swap": "outerHTML"}
# Typing in a text field refreshes only the summary (focus stays where it is).
LIVE_SUMMARY = {
    "hx-post": WIZARD_URL,
    "hx-trigger": "input changed delay:500ms",
    "hx-target": "#summary",
    "hx-swap": "outerHTML",
    "hx-vals": '{"part": "summary"}',
}
MODE_TEMPLATE, MODE_ASSEMBLE = "template", "assemble"


class BootstrapForm(forms.Form):
    """Bootstrap's classes on every widget (rendered by ``stacks/partials/_field.html``)."""

    def _set_choices(self, name: str, choices: list[tuple[str, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, (forms.CheckboxInput, forms.RadioSelect)):
                css = "form-check-input"
            elif isinstance(widget, forms.Select):
                css = "form-select"
            else:
                css = "form-control"
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()


class WizardForm(BootstrapForm):
    name = forms.CharField(
        max_length=100,
        label="Project name",
        widget=forms.TextInput(attrs={"autocomplete": "off", **LIVE_SUMMARY}),
    )
    region = forms.ChoiceField(label="Region", widget=forms.Select(attrs=LIVE))
    environment = forms.RegexField(
        regex=r"^[a-z0-9-]{1,30}$",
        max_length=30,
        initial="production",
        label="Environment",
        help_text="Lower-case letters, digits and hyphens, e.g. production or staging.",
        error_messages={"invalid": "Use 1 to 30 lower-case letters, digits and hyphens."},
        widget=forms.TextInput(attrs=LIVE_SUMMARY),
    )
    mode = forms.ChoiceField(
        choices=[(MODE_TEMPLATE, "A pre-built stack"), (MODE_ASSEMBLE, "Assemble my own")],
        initial=MODE_TEMPLATE,
        label="Stack",
        widget=forms.RadioSelect(attrs=LIVE),
    )
    template = forms.ChoiceField(
        required=False, label="Pre-built stack", widget=forms.RadioSelect(attrs=LIVE)
    )
    framework = forms.ChoiceField(required=False, label="Framework", widget=forms.Select(attrs=LIVE))
    kernel = forms.ChoiceField(
        required=False,
        label="Kernel line",
        help_text="The Linux kernel line of the hosts your stack runs on.",
        widget=forms.Select(attrs=LIVE),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        regions = list(Region.objects.filter(is_active=True).prefetch_related("kernel_lines"))
        self.regions = regions
        self._set_choices("region", [(r.code, r.name) for r in regions])
        self._set_choices(
            "template", [(t.code, t.name) for t in StackTemplate.objects.filter(is_active=True)]
        )
        self._set_choices(
            "framework",
            [("", "None (choose components only)")] + [(f.code, f.name) for f in Framework.objects.all()],
        )
        chosen = self.data.get("region") if self.is_bound else self.initial.get("region")
        self.chosen_region = next((r for r in regions if r.code == chosen), regions[0] if regions else None)
        self.region_lines = (
            {k.line for k in self.chosen_region.kernel_lines.all()} if self.chosen_region else set()
        )
        lines = [
            (k.line, k.name if k.line in self.region_lines else f"{k.name} — not in this region")
            for k in KernelVersion.objects.all()
        ]
        self._set_choices("kernel", [("", "The region's default"), *lines])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("mode") == MODE_TEMPLATE and not data.get("template"):
            self.add_error("template", "Choose one of the pre-built stacks.")
        kernel = data.get("kernel")
        if kernel and self.chosen_region and kernel not in self.region_lines:
            offered = ", ".join(k.name for k in self.chosen_region.kernel_lines.all()) or "no kernel line"
            self.add_error("kernel", f"{self.chosen_region.name} offers {offered} only.")
        return data


class ComponentRowForm(BootstrapForm):
    """One component of an assembled stack; checked by the spec's own validator and the
    catalog's rule for new stacks (current versions only), so the wizard refuses exactly
    what ``create_project`` would, with the same words."""

    name = forms.RegexField(
        regex=r"^[a-z][a-z0-9-]{0,29}$",
        max_length=30,
        label="Service name",
        error_messages={"invalid": "1 to 30 lower-case letters, digits and hyphens, a letter first."},
        widget=forms.TextInput(attrs=LIVE_SUMMARY),
    )
    component = forms.CharField(max_length=40, label="Component", widget=forms.Select(attrs=LIVE))
    version = forms.CharField(max_length=32, label="Version", widget=forms.Select(attrs=LIVE))
    size = forms.CharField(max_length=16, label="Size", widget=forms.Select(attrs=LIVE))
    replicas = forms.IntegerField(
        min_value=0, initial=1, label="Replicas", widget=forms.NumberInput(attrs=LIVE_SUMMARY)
    )
    public = forms.BooleanField(
        required=False, label="Public (gets the web address)", widget=forms.CheckboxInput(attrs=LIVE)
    )

    def __init__(self, *args: Any, catalog: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        catalog = catalog or wizard_catalog()
        self.fields["replicas"].widget.attrs.update(max=settings.STACKPORT_MAX_REPLICAS)
        components: list[Component] = catalog["components"]
        self.fields["component"].widget.choices = [
            (c.code, f"{c.name} ({c.get_kind_display().lower()})") for c in components
        ]
        chosen = (
            self.data.get(self.add_prefix("component")) if self.is_bound else self.initial.get("component")
        )
        component = next((c for c in components if c.code == chosen), components[0] if components else None)
        versions = catalog["versions"].get(component.code, []) if component else []
        self.fields["version"].widget.choices = [(v.version, version_label(v)) for v in versions]
        allowed = {s.code for s in catalog["sizes"].get(component.code, [])} if component else set()
        self.fields["size"].widget.choices = [
            (
                s.code,
                str(s)
                if s.code in allowed
                else f"{s} — not offered for {component.name if component else ''}",
            )
            for s in catalog["all_sizes"]
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            _component, version, _size = validate_component_row(self.row())
        except SpecError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
            return data
        refusal = new_stack_refusal(version)
        if refusal:
            self.add_error("version", refusal)
        return data

    def row(self) -> ComponentRow:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "component": data["component"],
            "version": data["version"],
            "size": data["size"],
            "replicas": data["replicas"],
            "public": bool(data.get("public")),
            "env": {},
        }


ComponentRowFormSet = forms.formset_factory(ComponentRowForm, extra=0, max_num=12, absolute_max=12)


def wizard_catalog() -> dict[str, Any]:
    """Components, the versions a new stack may use and sizes, loaded once per request."""
    components = list(Component.objects.prefetch_related("sizes"))
    return {
        "components": components,
        "versions": pickable_versions(),
        "sizes": {c.code: list(c.sizes.all()) for c in components},
        "all_sizes": list(Size.objects.all()),
    }


def version_label(cv: Any) -> str:
    label = cv.version
    if cv.status != "current":
        label += f" ({cv.get_status_display().lower()}"
        label += f", end of life on {cv.eol:%Y-%m-%d})" if cv.eol else ")"
    elif cv.eol:
        label += f" (supported until {cv.eol:%Y-%m-%d})"
    return str(label)


NAME_BY_KIND = {
    "web": "web",
    "runtime": "app",
    "sql": "db",
    "nosql": "cache",
    "cache": "cache",
    "queue": "queue",
}


class Wizard:
    """The new-project wizard over one request: the form, the component rows (when the
    customer assembles a stack), the rules applied to them, the price and the quota.

    Every POST re-renders (htmx or not); ``step`` "add" appends a component the stack
    lacks, "create" creates the project when nothing is wrong; ``drop`` removes a row. (Not
    "action" or "remove": a form's controls of those names would hide its DOM properties.)"""

    def __init__(self, request: HttpRequest, membership: Membership) -> None:
        self.organization = membership.organization
        self.user = cast(User, request.user)  # behind login_required
        self.catalog = wizard_catalog()
        posted = request.method == "POST"
        data = request.POST.copy() if posted else None
        self.action = str(data.get("step", "preview")) if data is not None else ""
        initial: dict[str, Any] = {"mode": MODE_TEMPLATE, "environment": "production"}
        if not posted and request.GET.get("template"):
            initial["template"] = request.GET["template"]
        self.form = WizardForm(data, initial=initial)
        self.assembling = bool(data is not None and data.get("mode") == MODE_ASSEMBLE)
        if data is not None and self.assembling:
            data = self._prepare_rows(data, request.POST.get("drop"))
        self.formset = ComponentRowFormSet(
            data if self.assembling else None, prefix="c", form_kwargs={"catalog": self.catalog}
        )
        self.rows: list[ComponentRow] = []
        self.stack_errors: list[str] = []
        self.price: Any = None
        self.quota: list[str] = []
        self.can_create = False
        self.checked = posted
        if posted:
            self._check()

    # -- rows -------------------------------------------------------------------------------------
    def _posted_rows(self, data: QueryDict) -> list[dict[str, Any]]:
        try:
            total = min(int(data.get("c-TOTAL_FORMS", "")), 12)
        except ValueError:
            return []
        keys = ("name", "component", "version", "size", "replicas", "public")
        return [{k: data.get(f"c-{i}-{k}", "") for k in keys} for i in range(total)]

    def _prepare_rows(self, data: QueryDict, remove: str | None) -> QueryDict:
        """Rows as the customer left them, with a removed row dropped, a new one added, the
        version put right when the component changed, or seeded from the chosen template."""
        rows = self._posted_rows(data)
        if "c-TOTAL_FORMS" not in data:
            rows = self._seed()
        if remove is not None and remove.isdigit() and int(remove) < len(rows):
            rows.pop(int(remove))
        if self.action == "add" and len(rows) < 12:
            rows.append(self._new_row(rows, data.get("framework", "")))
        versions = self.catalog["versions"]
        every = set(ComponentVersion.objects.values_list("component__code", "version"))
        for row in rows:
            if (row["component"], row["version"]) not in every and row["component"] in versions:
                row["version"] = _default_version(versions[row["component"]])
        for key in [k for k in data if k.startswith("c-")]:
            del data[key]
        data.update({"c-TOTAL_FORMS": str(len(rows)), "c-INITIAL_FORMS": "0"})
        for i, row in enumerate(rows):
            for key, value in row.items():
                if key == "public":
                    if value and value != "False":
                        data[f"c-{i}-public"] = "on"
                else:
                    data[f"c-{i}-{key}"] = str(value)
        return data

    def _seed(self) -> list[dict[str, Any]]:
        """Assembling starts from the chosen pre-built stack, else from one web server."""

        template = StackTemplate.objects.filter(code=self.form.data.get("template"), is_active=True).first()
        if template is not None:
            try:
                return [
                    {
                        "name": r["name"],
                        "component": r["component"],
                        "version": r["version"],
                        "size": r["size"],
                        "replicas": r["replicas"],
                        "public": r.get("public", False),
                    }
                    for r in lifecycle.template_rows(template)
                ]
            except ServiceError:
                pass
        return [self._new_row([], "")]

    def _new_row(self, rows: list[dict[str, Any]], framework_code: str) -> dict[str, Any]:
        components: list[Component] = self.catalog["components"]
        by_code = {c.code: c for c in components}
        present = {str(r.get("component")) for r in rows}
        wanted: Component | None = None
        framework = Framework.objects.filter(code=framework_code).select_related("runtime").first()
        if framework and framework.runtime and framework.runtime.code not in present:
            wanted = framework.runtime
        if wanted is None:
            for rule in CompatibilityRule.objects.filter(
                component__code__in=present, kind=CompatibilityRule.Kind.REQUIRES
            ).prefetch_related("others"):
                others = [o for o in rule.others.all() if o.code not in present]
                if len(others) == len(rule.others.all()) and others:
                    wanted = others[0]
                    break
        component = by_code.get(wanted.code) if wanted else None
        component = component or next((c for c in components if c.code not in present), components[0])
        taken = {str(r.get("name")) for r in rows}
        base = NAME_BY_KIND.get(component.kind, component.code[:20])
        name, n = base, 2
        while name in taken:
            name, n = f"{base}{n}", n + 1
        return {
            "name": name,
            "component": component.code,
            "version": _default_version(self.catalog["versions"].get(component.code, [])),
            "size": component.default_size.code if component.default_size_id else "",
            "replicas": 1,
            "public": not any(r.get("public") for r in rows) and component.kind in ("web", "runtime"),
        }

    # -- checking ---------------------------------------------------------------------------------
    def _check(self) -> None:
        valid = self.form.is_valid()
        data = self.form.cleaned_data if hasattr(self.form, "cleaned_data") else {}
        if not self.assembling:
            template = StackTemplate.objects.filter(code=data.get("template") or "", is_active=True).first()
            if template is not None:
                try:
                    self.rows = lifecycle.template_rows(template)
                except ServiceError as exc:
                    self.form.add_error("template", exc.message)
                    valid = False
        elif self.formset.is_valid():
            self.rows = [f.row() for f in self.formset.forms]
            valid = self._check_assembled(compatibility_problems) and valid
        else:
            valid = False
            self.rows = [f.row() for f in self.formset.forms if not f.errors]
        if self.rows and self.form.chosen_region is not None:
            policy = stack_policy()
            self.price = policy.estimate_monthly(
                organization=self.organization, region=self.form.chosen_region, rows=self.rows
            )
            self.quota = policy.stack_problems(organization=self.organization, rows=self.rows)
        self.can_create = bool(valid and self.rows and not self.quota)

    def _check_assembled(self, compatibility_problems: Any) -> bool:
        forms_ = self.formset.forms
        if not forms_:
            self.stack_errors.append("Add at least one component.")
            return False
        ok = True
        seen: set[str] = set()
        for form, row in zip(forms_, self.rows, strict=True):
            if row["name"] in seen:
                form.add_error("name", f"Another component is named {row['name']!r} already.")
                ok = False
            seen.add(row["name"])
        public = [f for f, r in zip(forms_, self.rows, strict=True) if r["public"]]
        for form in public[1:]:
            form.add_error("public", "Only one component can receive the public route.")
            ok = False
        framework = Framework.objects.filter(code=self.form.data.get("framework") or "").first()
        for problem in compatibility_problems(self.rows, framework):
            ok = False
            if problem.row is not None:
                forms_[problem.row].add_error(problem.field, problem.message)
            elif problem.field in self.form.fields:
                self.form.add_error(problem.field, problem.message)
            else:
                self.stack_errors.append(problem.message)
        return ok

    def create(self, origin: Origin) -> Environment:
        data = self.form.cleaned_data
        return lifecycle.create_project(
            organization=self.organization,
            actor=self.user,
            name=data["name"],
            region=data["region"],
            template=None if self.assembling else data["template"],
            components=self.rows if self.assembling else None,
            kernel=data.get("kernel") or None,
            environment=data["environment"],
            origin=origin,
        )

    def context(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "formset": self.formset,
            "assembling": self.assembling,
            "rows": self.rows,
            "stack_errors": self.stack_errors,
            "price": self.price,
            "quota": self.quota,
            "can_create": self.can_create,
            "checked": self.checked,
            "organization": self.organization,
            "templates": StackTemplate.objects.filter(is_active=True).prefetch_related(
                Prefetch(
                    "components", queryset=StackTemplateComponent.objects.select_related("component", "size")
                )
            ),
        }


def _default_version(versions: list[Any]) -> str:
    """The newest of the offered versions (``wizard_catalog`` lists them newest first)."""
    return str(versions[0].version) if versions else ""


# --- environment actions -------------------------------------------------------------------------
class ScaleForm(BootstrapForm):
    component = forms.CharField(max_length=30)
    replicas = forms.IntegerField(min_value=0, required=False)
    size = forms.ChoiceField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_choices("size", [("", "—")] + [(s.code, s.name) for s in Size.objects.all()])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("replicas") is None and not data.get("size"):
            raise forms.ValidationError("Give a number of replicas or a size.")
        return data


class UpgradeForm(BootstrapForm):
    component = forms.CharField(max_length=30)
    version = forms.CharField(max_length=32)


class RollbackForm(BootstrapForm):
    release = forms.IntegerField(min_value=1)


class DomainForm(BootstrapForm):
    hostname = forms.CharField(
        max_length=253, label="Domain", widget=forms.TextInput(attrs={"placeholder": "www.example.com"})
    )
    path_prefix = forms.CharField(
        max_length=256,
        required=False,
        label="Path prefix",
        widget=forms.TextInput(attrs={"placeholder": "/shop"}),
    )
    strip_prefix = forms.BooleanField(
        required=False,
        label="Strip the prefix",
        help_text=(
            "Only with a path prefix. Off: the app gets the full path (/shop/cart), for apps "
            "that live under /shop themselves. On: the app gets /cart, for apps written for "
            "the root of a site; the prefix arrives in the X-Forwarded-Prefix header."
        ),
    )


class VariableForm(BootstrapForm):
    name = forms.CharField(max_length=100, label="Name")
    value = forms.CharField(
        required=False, strip=False, label="Value", widget=forms.Textarea(attrs={"rows": 1})
    )
    secret = forms.BooleanField(required=False, label="Secret (write-only)")
    component = forms.CharField(max_length=30, required=False, label="Only for component")


class VariableDeleteForm(BootstrapForm):
    name = forms.CharField(max_length=100)
    component = forms.CharField(max_length=30, required=False)


class UploadForm(BootstrapForm):
    archive = forms.FileField(label="Archive (.zip, .tar.gz)")


class GitForm(BootstrapForm):
    git_url = forms.CharField(
        max_length=500,
        label="Repository URL",
        widget=forms.TextInput(attrs={"placeholder": "https://git.example.com/shop.git"}),
    )
    branch = forms.CharField(max_length=200, initial="main", label="Branch")


class DestroyForm(BootstrapForm):
    confirmation = forms.CharField(max_length=100, required=False, label="Type the project's name to confirm")
