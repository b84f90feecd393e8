/** pipeline/: the data-path stages joined (pure; driven by the bridge or the replay). */
export * from './config';
export * from './shadow-flow';
export * from './pipeline';
