import type { Client } from 'minio';
import type { Readable } from 'node:stream';
import { StoreError, minioClient, type S3Config } from '@vmlb/layer-engine';

/**
 * The few object calls the scheduler needs beside the engine's SharedStore (which owns layers,
 * JSON records and whole-file puts): stat, stream and presign an object (the final image),
 * list names (the build indexes), and a ping for /healthz. Names are
 * relative to the shared store's prefix, like SharedStore's records.
 */
export class ObjectStore {
  private readonly client: Client;

  constructor(private readonly config: S3Config) {
    this.client = minioClient(config);
  }

  /** `s3://BUCKET/PREFIX/rel`, for messages and build events. */
  url(rel: string): string {
    return `${this.config.url}/${rel}`;
  }

  private object(rel: string): string {
    return `${this.config.prefix}${rel}`;
  }

  /** The object's size, or null when there is none. */
  async stat(rel: string): Promise<{ size: number } | null> {
    return this.call(`stat ${rel}`, async () => {
      try {
        const s = await this.client.statObject(this.config.bucket, this.object(rel));
        return { size: s.size };
      } catch (e) {
        if (isNotFound(e)) return null;
        throw e;
      }
    });
  }

  async stream(rel: string): Promise<Readable> {
    return this.call(`read ${rel}`, () => this.client.getObject(this.config.bucket, this.object(rel)));
  }

  async presignedGet(rel: string, expirySeconds: number, filename?: string): Promise<string> {
    const headers = filename ? { 'response-content-disposition': `attachment; filename="${filename}"` } : undefined;
    return this.call(`presign ${rel}`, () => this.client.presignedGetObject(this.config.bucket, this.object(rel), expirySeconds, headers));
  }

  /** Names (relative to the prefix) of the objects under `dir`. */
  async list(dir: string): Promise<string[]> {
    return this.call(`list ${dir}`, async () => {
      const names: string[] = [];
      for await (const item of this.client.listObjectsV2(this.config.bucket, this.object(dir), true)) {
        const name = (item as { name?: string }).name;
        if (name) names.push(name.slice(this.config.prefix.length));
      }
      return names;
    });
  }

  /** Throws unless the bucket answers. */
  async ping(): Promise<void> {
    const ok = await this.call('reach the bucket', () => this.client.bucketExists(this.config.bucket));
    if (!ok) throw new StoreError(`the bucket ${this.config.bucket} does not exist at ${this.config.endpoint}`);
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof StoreError) throw e;
      throw new StoreError(`shared store ${this.config.url} at ${this.config.endpoint}: ${what} failed: ${(e as Error).message}`, { retryable: true, cause: e });
    }
  }
}

function isNotFound(e: unknown): boolean {
  const code = String((e as { code?: unknown })?.code ?? '');
  return code === 'NotFound' || code === 'NoSuchKey';
}
