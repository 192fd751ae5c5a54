import { describe, expect, it } from 'vitest';
import { SseParser, type SseMessage } from './sse';

function parse(chunks: string[]): SseMessage[] {
  const out: SseMessage[] = [];
  const p = new SseParser((m) => out.push(m));
  for (const c of chunks) p.push(c);
  return out;
}

describe('SseParser', () => {
  it('reads data, id and event fields, and skips comments (pings)', () => {
    expect(parse(['id: 1-0\ndata: {"a":1}\n\n: ping\n\nevent: end\ndata: {"b":2}\n\n'])).toEqual([
      { event: 'message', data: '{"a":1}', id: '1-0' },
      { event: 'end', data: '{"b":2}' },
    ]);
  });

  it('joins multi-line data and takes events split anywhere across chunks, with CRLF or CR line ends', () => {
    const text = 'data: one\r\ndata: two\r\n\r\ndata:three\r\rdata: four\n\n';
    const whole = parse([text]);
    expect(whole).toEqual([
      { event: 'message', data: 'one\ntwo' },
      { event: 'message', data: 'three' },
      { event: 'message', data: 'four' },
    ]);
    for (let i = 1; i < text.length; i++) expect(parse([text.slice(0, i), text.slice(i)])).toEqual(whole);
    expect(parse(text.split(''))).toEqual(whole);
  });

  it('dispatches nothing for an event without data, nor for an unfinished one', () => {
    expect(parse(['event: x\n\n', 'data: half'])).toEqual([]);
  });
});
