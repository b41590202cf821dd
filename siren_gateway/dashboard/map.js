// The map: Leaflet (vendored, see scripts/vendor_web.py) over the site's own tile server when it
// has one; always the site's own geometry: zone outlines with their names, siren markers with
// their labels, a scale bar. Each marker shows its state by colour and shape; with many sirens
// they are clustered (the cluster shows its count and its worst state).
import { CLASSES, SEVERITY_ORDER, esc, shape, t } from "/dashboard/common.js";

const L = window.L;
const CLUSTER_ABOVE = 300;  // sirens: fewer are all drawn (and labelled) at every zoom
const LABELS_UP_TO = 200;

export function createMap(element, { site, zoneName, onSiren, onPick }) {
  const map = L.map(element, { zoomSnap: 0.25, preferCanvas: false, keyboard: true,
    attributionControl: Boolean(site.map.tile_url), worldCopyJump: false });
  if (site.map.tile_url) {
    L.tileLayer(site.map.tile_url, { maxZoom: site.map.max_zoom, attribution: esc(site.map.attribution),
      className: "base-tiles" }).addTo(map);
  }
  L.control.scale({ metric: true, imperial: false }).addTo(map);
  const zones = L.layerGroup().addTo(map);
  const overlay = L.layerGroup().addTo(map);  // the coverage image and what-if candidates
  const markers = new Map();  // siren id -> { marker, cls }
  let group = null, bounds = null, picking = false;

  function drawZones() {
    zones.clearLayers();
    for (const zone of site.zones) {
      if (!zone.area) continue;
      const layer = L.geoJSON(zone.area, { style: { className: "zone-outline", interactive: false } });
      layer.eachLayer((path) => {
        path.options.className = "zone-outline";
        path.on("add", () => path.getElement()?.setAttribute("data-zone", zone.id));
        path.bindTooltip(esc(zoneName(zone.id)), { permanent: true, direction: "center", className: "zone-label" });
      });
      zones.addLayer(layer);
    }
  }

  function icon(cls) {
    return L.divIcon({ className: `siren-marker c-${cls}`, html: shape(cls), iconSize: [20, 20], iconAnchor: [10, 10] });
  }

  function decorate(id, entry, name) {
    const el = entry.marker.getElement();
    if (!el) return;
    el.dataset.id = id; el.dataset.class = entry.cls;
    el.setAttribute("role", "button");
    el.setAttribute("aria-label", `${id} ${name}: ${t("cls_" + entry.cls)}`);
  }

  function clusterIcon(cluster) {
    const classes = new Set(cluster.getAllChildMarkers().map((m) => m.options.sirenClass));
    const worst = SEVERITY_ORDER.find((c) => classes.has(c)) || "healthy";
    return L.divIcon({ className: `siren-cluster c-${worst}`, iconSize: [38, 38],
      html: `${shape(worst)}<b>${cluster.getChildCount()}</b>` });
  }

  // Every siren, its class now; only markers whose class changed are touched.
  function update(sirens) {
    if (!group) {
      group = sirens.length > CLUSTER_ABOVE && L.markerClusterGroup
        ? L.markerClusterGroup({ iconCreateFunction: clusterIcon, disableClusteringAtZoom: 17,
          chunkedLoading: true, showCoverageOnHover: false })
        : L.layerGroup();
      group.addTo(map);
    }
    const added = [], changed = [];
    for (const s of sirens) {
      let entry = markers.get(s.id);
      if (!entry) {
        const marker = L.marker([s.location.lat, s.location.lon], { icon: icon(s._class),
          sirenClass: s._class, keyboard: true, riseOnHover: true });
        entry = { marker, cls: s._class };
        markers.set(s.id, entry);
        marker.on("add", () => decorate(s.id, entry, s.name));
        marker.on("click", (event) => { if (picking) picked(event.latlng); else onSiren(s.id); });
        if (sirens.length <= LABELS_UP_TO) {
          marker.bindTooltip(esc(s.id), { permanent: true, direction: "right", offset: [8, 0], className: "siren-label" });
        } else marker.bindTooltip(esc(`${s.id} ${s.name}`), { direction: "top" });
        added.push(marker);
      } else if (entry.cls !== s._class) {
        entry.cls = s._class;
        entry.marker.options.sirenClass = s._class;
        entry.marker.setIcon(icon(s._class));
        decorate(s.id, entry, s.name);
        changed.push(entry.marker);
      }
    }
    // One pass over the clusters for all the markers that changed (one call per marker would
    // walk the cluster tree again each time).
    if (changed.length && group.refreshClusters) group.refreshClusters(changed);
    if (added.length) {
      if (group.addLayers) group.addLayers(added); else added.forEach((m) => group.addLayer(m));
    }
    if (!bounds && sirens.length) fit(sirens);
  }

  function fit(sirens) {
    const points = sirens.map((s) => [s.location.lat, s.location.lon]);
    for (const zone of site.zones) {
      if (zone.area) L.geoJSON(zone.area).eachLayer((l) => { const b = l.getBounds(); points.push(b.getSouthWest(), b.getNorthEast()); });
    }
    bounds = L.latLngBounds(points);
    map.fitBounds(bounds.pad(0.05));
  }

  // The coverage raster (from the server's layer) as an image under the markers, and the
  // what-if candidates; `image` null clears it.
  function setCoverage(image, layerBounds, candidates) {
    overlay.clearLayers();
    if (image) {
      const picture = L.imageOverlay(image, [[layerBounds.south, layerBounds.west], [layerBounds.north, layerBounds.east]],
        { className: "coverage-image", interactive: false });
      // (drawn once the map has its view: until then Leaflet holds the layer back)
      picture.on("add", () => { picture.getElement().id = "coverage-image"; });
      picture.addTo(overlay);
    }
    candidates.forEach((p, i) => {
      L.circleMarker([p.lat, p.lon], { radius: 7, className: "candidate", interactive: false })
        .on("add", function () { this.getElement()?.setAttribute("data-candidate", i); }).addTo(overlay);
    });
  }

  function picked(latlng) {
    picking = false;
    element.classList.remove("picking");
    onPick({ lat: latlng.lat, lon: latlng.lng });
  }
  map.on("click", (event) => { if (picking) picked(event.latlng); });

  drawZones();
  return {
    map, update, setCoverage,
    pick() { picking = true; element.classList.add("picking"); },
    relabel() { drawZones(); },
    classes: CLASSES,
  };
}
