import { describe, expect, it } from 'vitest';
import { ExitStack } from './exit-stack.js';

describe('ExitStack', () => {
  it('releases last first, each awaited before the next, once however often closed', async () => {
    const order: string[] = [];
    const stack = new ExitStack();
    stack.push(() => void order.push('first'));
    stack.push(async () => {
      await new Promise((r) => setTimeout(r, 10));
      order.push('second');
    });
    expect(stack.use({ name: 'third' }, (v) => void order.push(v.name))).toEqual({ name: 'third' });
    await Promise.all([stack.close(), stack.close()]);
    await stack.close();
    expect(order).toEqual(['third', 'second', 'first']);
  });

  it('runs every release when one throws, then throws the first error', async () => {
    const order: string[] = [];
    const stack = new ExitStack();
    stack.push(() => void order.push('a'));
    stack.push(() => {
      throw new Error('b failed');
    });
    stack.push(() => Promise.reject(new Error('c failed')));
    await expect(stack.close()).rejects.toThrow('c failed');
    expect(order).toEqual(['a']);
  });

  it('refuses a release pushed after close(): it would never run', async () => {
    const stack = new ExitStack();
    await stack.close();
    expect(() => stack.push(() => undefined)).toThrow('after close()');
  });

  it('build: a setup that throws has what it acquired released, and its own error thrown', async () => {
    const released: string[] = [];
    const failing = ExitStack.build(async (stack) => {
      stack.push(() => void released.push('redis'));
      stack.push(() => {
        throw new Error('the release failed too');
      });
      stack.push(() => void released.push('history'));
      throw new Error('the shared store does not answer');
    });
    await expect(failing).rejects.toThrow('the shared store does not answer');
    expect(released).toEqual(['history', 'redis']);
  });

  it('build: a setup that succeeds keeps its stack for later', async () => {
    const released: string[] = [];
    const stack = await ExitStack.build(async (s) => {
      s.push(() => void released.push('redis'));
      return s;
    });
    expect(released).toEqual([]);
    await stack.close();
    expect(released).toEqual(['redis']);
  });
});
