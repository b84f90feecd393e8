export * from './replay';
export * from './format';
