/** Text fitted to a terminal's columns: wide characters count two, combining marks none. */

export type Paint = (text: string) => string;
export type Segment = readonly [text: string, paint?: Paint];

/** Joins painted segments, cut with `…` to `width` terminal columns. */
export function fit(segments: readonly Segment[], width: number): string {
  const paint = (text: string, p?: Paint) => (p && text ? p(text) : text);
  if (segments.reduce((n, [t]) => n + textWidth(t), 0) <= width) {
    return segments.map(([t, p]) => paint(t, p)).join('');
  }
  let room = width - 1;
  let out = '';
  for (const [t, p] of segments) {
    let piece = '';
    for (const ch of t) {
      const w = charWidth(ch.codePointAt(0)!);
      if (w > room) return out + paint(`${piece}…`, p);
      room -= w;
      piece += ch;
    }
    out += paint(piece, p);
  }
  return out;
}

function textWidth(text: string): number {
  let n = 0;
  for (const ch of text) n += charWidth(ch.codePointAt(0)!);
  return n;
}

/** Terminal columns of a printable code point: 0 for combining marks, 2 for wide CJK and emoji. */
function charWidth(cp: number): number {
  if (cp < 0x300) return 1;
  if ((cp >= 0x300 && cp <= 0x36f) || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0xfe00 && cp <= 0xfe0f) || cp === 0xfeff) {
    return 0;
  }
  if (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf && cp !== 0x303f) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1f64f) ||
    (cp >= 0x1f900 && cp <= 0x1f9ff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  ) {
    return 2;
  }
  return 1;
}
