/** Hand-written SVG charts: p99 against offered rate per room size, and capacity bars. */

/** Colours and labels of the peers in charts. */
export const PEER_STYLE: Record<string, { color: string; label: string }> = {
  raw_deno: { color: "#6b7280", label: "raw Deno" },
  raw_deno_kv: { color: "#0d9488", label: "raw Deno + KV commit" },
  ours_ticket: { color: "#2563eb", label: "ours (ticket socket, history on)" },
  ours_native: { color: "#7c3aed", label: "ours (native protocol, history on)" },
  socketio: { color: "#d97706", label: "Socket.IO 4.8 (Node)" },
  ours_parallel: { color: "#059669", label: "ours, deno serve --parallel" },
};

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

const num = (n: number) => Number(n.toFixed(1));

/** One line of a panel: points (rate, p99 ms), failed steps drawn hollow. */
export interface Series {
  /** Peer id (selects the colour). */
  peer: string;
  /** Points in rate order. */
  points: { x: number; y: number; pass: boolean }[];
}

/** A panel of the latency chart. */
export interface Panel {
  /** Title above the panel. */
  title: string;
  /** One line per peer. */
  series: Series[];
}

/**
 * Small multiples: x is offered messages per second (log scale), y is p99 latency in ms (log
 * scale), with the bound drawn dashed.
 */
export function latencyChart(
  title: string,
  panels: Panel[],
  boundMs: number,
  xLabel: string,
): string {
  const pw = 300;
  const ph = 230;
  const m = { l: 56, r: 16, t: 56, b: 70 };
  const width = m.l + panels.length * (pw + 30) - 30 + m.r;
  const height = m.t + ph + m.b;
  const xs = panels.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q.x)));
  const ys = panels.flatMap((p) => p.series.flatMap((s) => s.points.map((q) => q.y)));
  const xMin = Math.min(...xs, 100);
  const xMax = Math.max(...xs, xMin * 2);
  const yMin = Math.pow(10, Math.floor(Math.log10(Math.max(0.05, Math.min(...ys, 1)))));
  const yMax = Math.pow(10, Math.ceil(Math.log10(Math.max(...ys, boundMs * 2))));
  const lx = (x: number) => (Math.log(x) - Math.log(xMin)) / (Math.log(xMax) - Math.log(xMin));
  const ly = (y: number) =>
    (Math.log10(Math.min(yMax, Math.max(yMin, y))) - Math.log10(yMin)) /
    (Math.log10(yMax) - Math.log10(yMin));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${m.l}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`,
  );
  const xTicks: number[] = [];
  for (let t = Math.pow(10, Math.floor(Math.log10(xMin))); t <= xMax * 1.001; t *= 10) {
    for (const k of [1, 2, 5]) {
      if (t * k >= xMin * 0.999 && t * k <= xMax * 1.001) xTicks.push(t * k);
    }
  }
  panels.forEach((panel, i) => {
    const x0 = m.l + i * (pw + 30);
    const y0 = m.t;
    const px = (x: number) => num(x0 + lx(x) * pw);
    const py = (y: number) => num(y0 + ph - ly(y) * ph);
    out.push(
      `<text x="${x0}" y="${y0 - 10}" font-size="12" font-weight="bold">${esc(panel.title)}</text>`,
    );
    out.push(
      `<rect x="${x0}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#d1d5db"/>`,
    );
    for (let t = yMin; t <= yMax * 1.001; t *= 10) {
      out.push(
        `<line x1="${x0}" x2="${x0 + pw}" y1="${py(t)}" y2="${py(t)}" stroke="#eef0f3"/>`,
        `<text x="${x0 - 6}" y="${py(t) + 4}" text-anchor="end" fill="#4b5563">${
          t >= 1 ? t : t.toPrecision(1)
        }</text>`,
      );
    }
    for (const t of xTicks) {
      out.push(
        `<line x1="${px(t)}" x2="${px(t)}" y1="${y0}" y2="${y0 + ph}" stroke="#eef0f3"/>`,
        `<text x="${px(t)}" y="${y0 + ph + 15}" text-anchor="middle" fill="#4b5563">${
          t >= 1000 ? `${t / 1000}k` : t
        }</text>`,
      );
    }
    out.push(
      `<line x1="${x0}" x2="${x0 + pw}" y1="${py(boundMs)}" y2="${
        py(boundMs)
      }" stroke="#dc2626" stroke-dasharray="5 4"/>`,
      `<text x="${x0 + pw - 4}" y="${
        py(boundMs) - 4
      }" text-anchor="end" fill="#dc2626">p99 bound ${boundMs} ms</text>`,
    );
    for (const s of panel.series) {
      const color = PEER_STYLE[s.peer]?.color ?? "#111827";
      if (s.points.length > 1) {
        const d = s.points.map((q, k) => `${k === 0 ? "M" : "L"}${px(q.x)},${py(q.y)}`).join(" ");
        out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`);
      }
      for (const q of s.points) {
        out.push(
          `<circle cx="${px(q.x)}" cy="${py(q.y)}" r="3.5" fill="${
            q.pass ? color : "#ffffff"
          }" stroke="${color}" stroke-width="1.5"/>`,
        );
      }
    }
    out.push(
      `<text x="${x0 + pw / 2}" y="${y0 + ph + 32}" text-anchor="middle" fill="#111827">${
        esc(xLabel)
      }</text>`,
    );
  });
  out.push(
    `<text transform="translate(16 ${
      m.t + ph / 2
    }) rotate(-90)" text-anchor="middle" fill="#111827">p99 latency, ms (log)</text>`,
  );
  const peers = [...new Set(panels.flatMap((p) => p.series.map((s) => s.peer)))];
  let lx0 = m.l;
  const ly0 = height - 14;
  for (const peer of peers) {
    const style = PEER_STYLE[peer] ?? { color: "#111827", label: peer };
    out.push(
      `<line x1="${lx0}" x2="${lx0 + 18}" y1="${ly0 - 4}" y2="${
        ly0 - 4
      }" stroke="${style.color}" stroke-width="2"/>`,
      `<circle cx="${lx0 + 9}" cy="${ly0 - 4}" r="3.5" fill="${style.color}"/>`,
      `<text x="${lx0 + 24}" y="${ly0}">${esc(style.label)}</text>`,
    );
    lx0 += 40 + style.label.length * 5.6;
  }
  out.push(
    `<text x="${lx0 + 6}" y="${ly0}" fill="#4b5563">hollow: step over the bound or lossy</text>`,
  );
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

/** A group of bars: one value per peer. */
export interface BarGroup {
  /** Label of the group. */
  label: string;
  /** Values by peer; null when the peer has none. */
  values: { peer: string; value: number | null; text: string }[];
}

/** Horizontal grouped bars, each group scaled to its own largest value. */
export function barChart(title: string, subtitle: string, groups: BarGroup[]): string {
  const barH = 16;
  const gap = 14;
  const labelW = 250;
  const barW = 380;
  const textW = 150;
  const m = { t: 58, l: 12 };
  const rows = groups.reduce((s, g) => s + g.values.length, 0);
  const height = m.t + rows * (barH + 3) + groups.length * (gap + barH + 2) + 20;
  const width = m.l + labelW + barW + textW;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${m.l}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`,
    `<text x="${m.l}" y="40" fill="#4b5563">${esc(subtitle)}</text>`,
  ];
  let y = m.t;
  for (const g of groups) {
    const max = Math.max(...g.values.map((v) => v.value ?? 0), 1e-9);
    out.push(`<text x="${m.l}" y="${y + barH - 4}" font-weight="bold">${esc(g.label)}</text>`);
    y += barH + 2;
    for (const v of g.values) {
      const style = PEER_STYLE[v.peer] ?? { color: "#111827", label: v.peer };
      const w = v.value === null ? 0 : Math.max(1, (v.value / max) * barW);
      out.push(
        `<text x="${m.l + labelW - 8}" y="${y + barH - 4}" text-anchor="end" fill="#374151">${
          esc(style.label)
        }</text>`,
        `<rect x="${m.l + labelW}" y="${y}" width="${
          num(w)
        }" height="${barH}" fill="${style.color}"/>`,
        `<text x="${num(m.l + labelW + w + 6)}" y="${y + barH - 4}" fill="#111827">${
          esc(v.text)
        }</text>`,
      );
      y += barH + 3;
    }
    y += gap;
  }
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
