// Runs the ORIGINAL face-api.js expression network (@vladmandic/face-api, its own
// FaceExpressionNet class and its own input pipeline: padToSquare + resizeBilinear + normalize)
// on TensorFlow.js's pure-JavaScript cpu backend, to check cer-stream's ONNX port
// (tests/test_faceapi.py). No tfjs-node native binary is used.
//
//   node faceapi_reference.mjs CROPS.json [--model-dir DIR] [--dump-input]
//
// CROPS.json: {"crops": [{"height": H, "width": W, "rgb_base64": "<H*W*3 uint8 RGB, row-major>"}]}
// Prints one JSON document on stdout:
//   {"tfjs": "4.22.0", "faceapi": "1.7.15", "backend": "cpu", "labels": [...7],
//    "probs": [[7 floats] per crop], "inputs": [[112*112*3 floats] per crop] (only with --dump-input)}
// "inputs" is face-api's own batch tensor (NetInput.toBatchTensor(112, true)), before the mean
// subtraction and division by 255.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
// The Node build that loads the plain @tensorflow/tfjs package (its wasm backend is registered
// but not used: the cpu backend is selected below).
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;

function parseArgs(argv) {
  const args = { crops: null, modelDir: null, dumpInput: false };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--model-dir') args.modelDir = argv[++i];
    else if (argv[i] === '--dump-input') args.dumpInput = true;
    else if (!args.crops) args.crops = argv[i];
    else throw new Error(`unexpected argument ${argv[i]}`);
  }
  if (!args.crops) throw new Error('usage: node faceapi_reference.mjs CROPS.json [--model-dir DIR] [--dump-input]');
  if (!args.modelDir) {
    args.modelDir = path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`backend is ${tf.getBackend()}, expected cpu`);

  // Weights: the package's manifest + bin, decoded by tfjs itself (uint8 dequantisation included).
  const manifest = JSON.parse(readFileSync(path.join(args.modelDir, 'face_expression_model-weights_manifest.json'), 'utf8'));
  const specs = manifest.flatMap((group) => group.weights);
  const buffers = manifest.flatMap((group) => group.paths.map((p) => readFileSync(path.join(args.modelDir, p))));
  const joined = Buffer.concat(buffers);
  const weightMap = tf.io.decodeWeights(joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength), specs);
  const net = new faceapi.FaceExpressionNet();
  net.loadFromWeightMap(weightMap);

  const { crops } = JSON.parse(readFileSync(args.crops, 'utf8'));
  const probs = [];
  const inputs = [];
  for (const crop of crops) {
    const data = Buffer.from(crop.rgb_base64, 'base64');
    if (data.length !== crop.height * crop.width * 3) throw new Error('crop size does not match its bytes');
    const image = tf.tensor3d(new Int32Array(data), [crop.height, crop.width, 3], 'int32');
    const netInput = await faceapi.toNetInput(image);
    if (args.dumpInput) {
      const batch = netInput.toBatchTensor(112, true);
      inputs.push(Array.from(batch.dataSync()));
      batch.dispose();
    }
    const out = net.forwardInput(netInput);
    probs.push(Array.from(out.dataSync()));
    out.dispose();
    image.dispose();
  }
  const result = {
    tfjs: tf.version_core, faceapi: faceapi.version, backend: tf.getBackend(),
    labels: faceapi.FACE_EXPRESSION_LABELS ?? null, probs,
  };
  if (args.dumpInput) result.inputs = inputs;
  process.stdout.write(JSON.stringify(result));
  process.stdout.write('\n');
}

main().catch((err) => {
  process.stderr.write(`faceapi_reference: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
