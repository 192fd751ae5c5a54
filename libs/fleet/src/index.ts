export * from './names.js';
export * from './jobs.js';
export * from './build-record.js';
export * from './config.js';
export * from './redis.js';
