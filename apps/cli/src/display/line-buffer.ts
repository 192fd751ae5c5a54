const MAX_LINE = 4096;

/**
 * Turns a script's raw output into the lines a terminal would end up showing: escape sequences
 * (colors, cursor moves, titles) are dropped, even when split across chunks; a line rewritten
 * with a bare `\r` (progress bars) keeps only its latest text; backspaces and tabs are applied.
 */
export class LineBuffer {
  private line = '';
  private cr = false;
  private state: 'text' | 'esc' | 'csi' | 'str' | 'str-esc' | 'esc-inter' = 'text';

  get partial(): string {
    return this.line;
  }

  /** Returns the lines completed by this chunk. */
  feed(chunk: string): string[] {
    const done: string[] = [];
    for (const ch of chunk) {
      const code = ch.codePointAt(0)!;
      switch (this.state) {
        case 'esc':
          if (ch === '[') this.state = 'csi';
          else if (ch === ']' || ch === 'P' || ch === 'X' || ch === '^' || ch === '_') this.state = 'str';
          else if (code >= 0x20 && code <= 0x2f) this.state = 'esc-inter';
          else this.state = 'text';
          continue;
        case 'esc-inter':
          if (code < 0x20 || code > 0x2f) this.state = 'text';
          continue;
        case 'csi':
          if (code >= 0x20 && code <= 0x3f) continue;
          this.state = 'text';
          if (code >= 0x40 && code <= 0x7e) continue;
          break; // a control character cut the sequence short: handle it as text
        case 'str':
          if (ch === '\x07') this.state = 'text';
          else if (ch === '\x1b') this.state = 'str-esc';
          continue;
        case 'str-esc':
          this.state = ch === '\\' ? 'text' : 'str';
          continue;
        case 'text':
          break;
      }
      if (ch === '\n') {
        done.push(this.line);
        this.line = '';
        this.cr = false;
      } else if (ch === '\r') {
        this.cr = true; // cleared only when new text arrives, so `50%\r` still shows 50%
      } else if (ch === '\x1b') {
        this.state = 'esc';
      } else if (ch === '\x9b') {
        this.state = 'csi';
      } else if (ch === '\b') {
        this.line = this.line.slice(0, -1);
      } else if (ch === '\t') {
        this.append(' '.repeat(8 - (this.line.length % 8)));
      } else if (code >= 0x20 && code !== 0x7f && !(code >= 0x80 && code < 0xa0)) {
        this.append(ch);
      }
    }
    return done;
  }

  /** The unfinished line, if any, as a last line (at the layer's end). */
  flush(): string | null {
    const rest = this.line;
    this.line = '';
    this.cr = false;
    this.state = 'text';
    return rest === '' ? null : rest;
  }

  private append(text: string): void {
    if (this.cr) {
      this.line = '';
      this.cr = false;
    }
    if (this.line.length < MAX_LINE) this.line += text;
  }
}

export function textLines(text: string): string[] {
  const buf = new LineBuffer();
  const lines = buf.feed(text);
  const rest = buf.flush();
  if (rest !== null) lines.push(rest);
  while (lines.length && lines[lines.length - 1]!.trim() === '') lines.pop();
  return lines;
}

export const oneLine = (text: string) => textLines(text).join(' ').trim();
